/* kv: parsing, pure computation (kv_compute), execution (kv_exec) and
 * replicated application (kv_apply_*) of the data commands; see kv.h. */
#include "kv.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "resp.h"

/* ---- spaces --------------------------------------------------------------- */

kv_space *kv_space_new(uint32_t id, const space_schema *schema)
{
    kv_space *sp = malloc(sizeof *sp);
    if (!sp) abort();
    atomic_init(&sp->refs, 1);
    sp->id = id;
    sp->schema = space_dup(schema);
    if (!sp->schema) abort();
    return sp;
}

void kv_space_ref(kv_space *sp)
{
    atomic_fetch_add(&sp->refs, 1);
}

void kv_space_unref(kv_space *sp)
{
    if (sp && atomic_fetch_sub(&sp->refs, 1) == 1) {
        space_free(sp->schema);
        free(sp);
    }
}

/* ---- parsing -------------------------------------------------------------- */

static const struct {
    const char *name;
    int kind;
} kinds[] = {{"PUT", KV_PUT}, {"GET", KV_GET},       {"DEL", KV_DEL},    {"CPUT", KV_CPUT},
             {"ADD", KV_ADD}, {"SEARCH", KV_SEARCH}, {"COUNT", KV_COUNT}};

int kv_kind_of(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strlen(kinds[i].name) == len && strncasecmp(kinds[i].name, name, len) == 0)
            return kinds[i].kind;
    return 0;
}

bool kv_is_write(int kind)
{
    return kind == KV_PUT || kind == KV_DEL || kind == KV_CPUT || kind == KV_ADD;
}

static bool word_is(const char *w, size_t len, const char *kw)
{
    return strlen(kw) == len && strncasecmp(w, kw, len) == 0;
}

void kv_reply_nospace(buf *out, const char *name, size_t len)
{
    resp_add_errorf(out, "NOSPACE no such space '%.*s'", (int)(len > 64 ? 64 : len), name);
}

static void reply_noattr(buf *out, const space_schema *s, const char *a, size_t len)
{
    resp_add_errorf(out, "NOATTR space '%s' has no attribute '%.*s'", s->name,
                    (int)(len > 64 ? 64 : len), a);
}

/* Resolves an attribute name; -1 (and an error reply) if unknown. The key
 * name resolves to -2 when allow_key. */
static int find_attr(const space_schema *s, const char *a, size_t len, bool allow_key, buf *err)
{
    int i = space_attr_find(s, a, len);
    if (i >= 0) return i;
    if (allow_key && strlen(s->key_name) == len && memcmp(s->key_name, a, len) == 0) return -2;
    if (strlen(s->key_name) == len && memcmp(s->key_name, a, len) == 0) {
        resp_add_errorf(err, "ERR the key attribute '%s' cannot be assigned", s->key_name);
        return -1;
    }
    reply_noattr(err, s, a, len);
    return -1;
}

static int parse_value(const space_schema *s, int attr, const char *text, size_t len, obj_value *v,
                       buf *err)
{
    space_type t = attr < 0 ? SPACE_STRING : s->attrs[attr].type;
    if (obj_parse_value(t, text, len, v) == 0) return 0;
    resp_add_errorf(err, "WRONGTYPE attribute '%s' is %s, got '%.*s'",
                    attr < 0 ? s->key_name : s->attrs[attr].name, space_type_name(t),
                    (int)(len > 64 ? 64 : len), text);
    return -1;
}

/* Parses n (attr value) pairs at argv[i..]. */
static int parse_assigns(const space_schema *s, char **argv, const size_t *argvlen, int i, int n,
                         kv_assign *out, buf *err)
{
    for (int j = 0; j < n; j++) {
        int a = find_attr(s, argv[i + 2 * j], argvlen[i + 2 * j], false, err);
        if (a < 0) return -1;
        out[j].attr = (uint32_t)a;
        if (parse_value(s, a, argv[i + 2 * j + 1], argvlen[i + 2 * j + 1], &out[j].v, err))
            return -1;
    }
    return 0;
}

static int parse_op(const char *w, size_t len)
{
    if (len == 1 && w[0] == '=') return KV_EQ;
    if (len == 1 && w[0] == '<') return KV_LT;
    if (len == 2 && w[0] == '<' && w[1] == '=') return KV_LE;
    if (len == 1 && w[0] == '>') return KV_GT;
    if (len == 2 && w[0] == '>' && w[1] == '=') return KV_GE;
    return 0;
}

static void wrong_args(buf *err, const char *cmd, size_t len)
{
    resp_add_errorf(err, "ERR wrong number of arguments for '%.*s'", (int)(len > 16 ? 16 : len),
                    cmd);
}

static kv_op *op_alloc(int kind, int argc)
{
    size_t n = (size_t)(argc > 0 ? argc : 1);
    kv_op *op = calloc(1, sizeof *op + n * (sizeof(kv_assign) * 2 + sizeof(kv_pred)));
    if (!op) abort();
    op->kind = kind;
    op->set = (kv_assign *)(op + 1);
    op->cond = op->set + n;
    op->preds = (kv_pred *)(op->cond + n);
    op->limit = UINT64_MAX;
    return op;
}

int kv_parse(const cmap_space *cs, kv_space *sp, int argc, char **argv, const size_t *argvlen,
             size_t max_key, kv_op **out, buf *err)
{
    *out = NULL;
    int kind = kv_kind_of(argv[0], argvlen[0]);
    const space_schema *s = sp->schema;
    bool point = kind != KV_SEARCH && kind != KV_COUNT;
    if (argc < 2 || (point && argc < 3)) goto err_args;
    if (point && argvlen[2] > max_key) {
        resp_add_errorf(err, "ERR key exceeds max_key_bytes (%zu)", max_key);
        return -1;
    }
    kv_op *op = op_alloc(kind, argc);
    op->sp = sp;
    kv_space_ref(sp);
    if (point) {
        op->key = argv[2];
        op->klen = argvlen[2];
        op->part = cmap_partition_of(cs, op->key, op->klen);
    }
    switch (kind) {
    case KV_GET:
    case KV_DEL:
        if (argc != 3) goto err_args_op;
        break;
    case KV_PUT:
        if ((argc - 3) % 2) goto err_args_op;
        op->nset = (uint32_t)(argc - 3) / 2;
        if (parse_assigns(s, argv, argvlen, 3, (int)op->nset, op->set, err)) goto err_op;
        break;
    case KV_CPUT: {
        /* CPUT space key IF [a v]... SET [a v]... */
        if (argc < 4 || !word_is(argv[3], argvlen[3], "IF")) goto err_args_op;
        int set_at = -1;
        for (int i = 4; i < argc; i += 2)
            if (word_is(argv[i], argvlen[i], "SET")) {
                set_at = i;
                break;
            }
        if (set_at < 0 || (argc - set_at - 1) % 2 || argc - set_at - 1 == 0) goto err_args_op;
        for (int i = set_at + 1; i < argc; i += 2)
            if ((word_is(argv[i], argvlen[i], "SET") || word_is(argv[i], argvlen[i], "IF")) &&
                space_attr_find(s, argv[i], argvlen[i]) < 0) {
                resp_add_error(err, "ERR syntax error: CPUT takes IF once, then SET once");
                goto err_op;
            }
        op->ncond = (uint32_t)(set_at - 4) / 2;
        op->nset = (uint32_t)(argc - set_at - 1) / 2;
        if (parse_assigns(s, argv, argvlen, 4, (int)op->ncond, op->cond, err) ||
            parse_assigns(s, argv, argvlen, set_at + 1, (int)op->nset, op->set, err))
            goto err_op;
        break;
    }
    case KV_ADD: {
        if (argc != 5) goto err_args_op;
        int a = find_attr(s, argv[3], argvlen[3], false, err);
        if (a < 0) goto err_op;
        if (s->attrs[a].type != SPACE_INT) {
            resp_add_errorf(err, "WRONGTYPE attribute '%s' is %s; ADD needs an int attribute",
                            s->attrs[a].name, space_type_name(s->attrs[a].type));
            goto err_op;
        }
        obj_value d;
        if (obj_parse_value(SPACE_INT, argv[4], argvlen[4], &d)) {
            resp_add_errorf(err, "WRONGTYPE delta '%.*s' is not an int",
                            (int)(argvlen[4] > 64 ? 64 : argvlen[4]), argv[4]);
            goto err_op;
        }
        op->attr = (uint32_t)a;
        op->delta = d.u.i;
        break;
    }
    case KV_SEARCH:
    case KV_COUNT: {
        int end = argc;
        if (kind == KV_SEARCH && argc >= 4 && word_is(argv[argc - 2], argvlen[argc - 2], "LIMIT") &&
            (argc - 4) % 3 == 0) {
            obj_value l;
            if (obj_parse_value(SPACE_INT, argv[argc - 1], argvlen[argc - 1], &l) || l.u.i < 0) {
                resp_add_errorf(err, "ERR LIMIT needs a non-negative integer, got '%.*s'",
                                (int)(argvlen[argc - 1] > 32 ? 32 : argvlen[argc - 1]),
                                argv[argc - 1]);
                goto err_op;
            }
            op->limit = (uint64_t)l.u.i;
            end = argc - 2;
        }
        if ((end - 2) % 3) goto err_args_op;
        op->npreds = (uint32_t)(end - 2) / 3;
        for (uint32_t j = 0; j < op->npreds; j++) {
            int i = 2 + 3 * (int)j;
            int a = find_attr(s, argv[i], argvlen[i], true, err);
            if (a == -1) goto err_op;
            kv_pred *p = &op->preds[j];
            p->attr = a < 0 ? -1 : a;
            p->op = parse_op(argv[i + 1], argvlen[i + 1]);
            if (!p->op) {
                resp_add_errorf(err, "ERR unknown operator '%.*s' (use = < <= > >=)",
                                (int)(argvlen[i + 1] > 16 ? 16 : argvlen[i + 1]), argv[i + 1]);
                goto err_op;
            }
            if (parse_value(s, p->attr, argv[i + 2], argvlen[i + 2], &p->v, err)) goto err_op;
        }
        /* A key equality confines the search to the key's partition (the
         * first one is the one plan() picks). */
        for (uint32_t j = 0; j < op->npreds; j++)
            if (op->preds[j].attr < 0 && op->preds[j].op == KV_EQ) {
                op->part = cmap_partition_of(cs, op->preds[j].v.u.s.p, op->preds[j].v.u.s.len);
                break;
            }
        break;
    }
    default:
        goto err_args_op;
    }
    *out = op;
    return 0;

err_args_op:
    wrong_args(err, argv[0], argvlen[0]);
err_op:
    kv_op_free(op);
    return -1;
err_args:
    wrong_args(err, argv[0], argvlen[0]);
    return -1;
}

void kv_op_detach(kv_op *op)
{
    if (op->mem) return;
    size_t n = op->klen;
    for (uint32_t i = 0; i < op->nset; i++)
        if (op->set[i].v.type == SPACE_STRING) n += op->set[i].v.u.s.len;
    for (uint32_t i = 0; i < op->ncond; i++)
        if (op->cond[i].v.type == SPACE_STRING) n += op->cond[i].v.u.s.len;
    for (uint32_t i = 0; i < op->npreds; i++)
        if (op->preds[i].v.type == SPACE_STRING) n += op->preds[i].v.u.s.len;
    char *m = malloc(n ? n : 1);
    if (!m) abort();
    op->mem = m;
#define MOVE(p, len)                                                                               \
    do {                                                                                           \
        if (len) memcpy(m, (p), (len));                                                            \
        (p) = m;                                                                                   \
        m += (len);                                                                                \
    } while (0)
    MOVE(op->key, op->klen);
    for (uint32_t i = 0; i < op->nset; i++)
        if (op->set[i].v.type == SPACE_STRING) MOVE(op->set[i].v.u.s.p, op->set[i].v.u.s.len);
    for (uint32_t i = 0; i < op->ncond; i++)
        if (op->cond[i].v.type == SPACE_STRING) MOVE(op->cond[i].v.u.s.p, op->cond[i].v.u.s.len);
    for (uint32_t i = 0; i < op->npreds; i++)
        if (op->preds[i].v.type == SPACE_STRING) MOVE(op->preds[i].v.u.s.p, op->preds[i].v.u.s.len);
#undef MOVE
}

void kv_op_free(kv_op *op)
{
    if (!op) return;
    kv_space_unref(op->sp);
    free(op->mem);
    free(op);
}

/* ---- execution ------------------------------------------------------------ */

static void add_value(buf *out, const obj_value *v)
{
    if (v->type == SPACE_INT) {
        resp_add_int(out, v->u.i);
    } else if (v->type == SPACE_STRING) {
        resp_add_bulk(out, v->u.s.p, v->u.s.len);
    } else {
        buf b;
        buf_init(&b);
        obj_format_value(v, &b);
        resp_add_bulk(out, b.data, b.len);
        buf_free(&b);
    }
}

static void add_object(buf *out, const space_schema *s, const obj_value *vals)
{
    for (uint32_t a = 0; a < s->nattrs; a++) {
        resp_add_bulk_str(out, s->attrs[a].name);
        add_value(out, &vals[a]);
    }
}

static int bump_seq(store_txn *t, const kv_op *op)
{
    store_part_meta m;
    int rc = store_part_meta_get(t, op->sp->id, op->part, &m);
    if (rc) return rc;
    m.seq++;
    return store_part_meta_put(t, op->sp->id, op->part, &m);
}

/* Copies the stored object at key into cur (invariant 4); *exists says
 * whether there was one. 0 or a storage error. */
static int load_copy(store_txn *t, uint32_t space, uint32_t part, const void *key, size_t klen,
                     buf *cur, bool *exists)
{
    const void *data;
    size_t len;
    *exists = false;
    int rc = store_obj_get(t, space, part, key, klen, &data, &len);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    buf_append(cur, data, len);
    *exists = true;
    return 0;
}

static bool pred_holds(const kv_pred *p, const obj_value *v)
{
    int c = obj_compare(v, &p->v);
    switch (p->op) {
    case KV_EQ:
        return c == 0;
    case KV_LT:
        return c < 0;
    case KV_LE:
        return c <= 0;
    case KV_GT:
        return c > 0;
    case KV_GE:
        return c >= 0;
    }
    return false;
}

static bool matches(const kv_op *op, const void *key, size_t klen, const obj_value *vals)
{
    for (uint32_t i = 0; i < op->npreds; i++) {
        const kv_pred *p = &op->preds[i];
        obj_value kv;
        const obj_value *v = &vals[p->attr];
        if (p->attr < 0) {
            kv.type = SPACE_STRING;
            kv.u.s.p = key;
            kv.u.s.len = klen;
            v = &kv;
        }
        if (!pred_holds(p, v)) return false;
    }
    return true;
}

struct search_ctx {
    store_txn *t;
    const kv_op *op;
    uint32_t part;
    obj_value *vals;
    uint64_t found;
    buf *body;
    int err;
};

/* Considers one object; returns 1 once the limit is reached. */
static int consider(struct search_ctx *x, const void *key, size_t klen, const void *data,
                    size_t len)
{
    const space_schema *s = x->op->sp->schema;
    if (x->found >= x->op->limit) return 1;
    if (obj_decode(s, data, len, x->vals)) {
        x->err = MDB_CORRUPTED;
        return -1;
    }
    if (!matches(x->op, key, klen, x->vals)) return 0;
    x->found++;
    if (x->op->kind == KV_SEARCH) {
        resp_add_array(x->body, 2 + 2 * (long long)s->nattrs);
        resp_add_bulk_str(x->body, s->key_name);
        resp_add_bulk(x->body, key, klen);
        add_object(x->body, s, x->vals);
    }
    return x->found >= x->op->limit ? 1 : 0;
}

static int scan_cb(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
    return consider(arg, key, klen, val, vlen);
}

static int index_cb(void *arg, const void *key, size_t klen)
{
    struct search_ctx *x = arg;
    const void *data;
    size_t len;
    int rc = store_obj_get(x->t, x->op->sp->id, x->part, key, klen, &data, &len);
    if (rc) {
        /* An index entry without its object breaks store invariant 1. */
        x->err = rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
        return -1;
    }
    return consider(x, key, klen, data, len);
}

/* Picks the predicate that narrows a partition scan best: a key equality
 * (point lookup), else an indexed equality, else an indexed range. */
static const kv_pred *plan(const kv_op *op)
{
    const kv_pred *best = NULL;
    int best_rank = 0;
    for (uint32_t i = 0; i < op->npreds; i++) {
        const kv_pred *p = &op->preds[i];
        int rank = 0;
        if (p->attr < 0 && p->op == KV_EQ)
            rank = 3;
        else if (p->attr >= 0 && op->sp->schema->attrs[p->attr].indexed)
            rank = p->op == KV_EQ ? 2 : 1;
        if (rank > best_rank) {
            best = p;
            best_rank = rank;
        }
    }
    return best;
}

static int search_partition(struct search_ctx *x, const kv_pred *p)
{
    const kv_op *op = x->op;
    if (p && p->attr < 0) {
        const void *data;
        size_t len;
        int rc = store_obj_get(x->t, op->sp->id, x->part, p->v.u.s.p, p->v.u.s.len, &data, &len);
        if (rc == MDB_NOTFOUND || rc == MDB_BAD_VALSIZE) return 0;
        if (rc) return rc;
        consider(x, p->v.u.s.p, p->v.u.s.len, data, len);
        return x->err;
    }
    int rc;
    if (p) {
        buf img;
        buf_init(&img);
        obj_index_key(&p->v, &img);
        const void *lo = p->op == KV_EQ || p->op == KV_GT || p->op == KV_GE ? img.data : NULL;
        const void *hi = p->op == KV_EQ || p->op == KV_LT || p->op == KV_LE ? img.data : NULL;
        rc = store_index_scan(x->t, op->sp->id, x->part, (uint16_t)p->attr, img.len, lo, hi,
                              index_cb, x);
        buf_free(&img);
    } else {
        rc = store_scan(x->t, op->sp->id, x->part, scan_cb, x);
    }
    if (x->err) return x->err;
    return rc;
}

static int exec_search(store_txn *t, const kv_op *op, buf *reply)
{
    const space_schema *s = op->sp->schema;
    obj_value vals[SPACE_MAX_ATTRS];
    buf body;
    buf_init(&body);
    struct search_ctx x = {.t = t, .op = op, .vals = vals, .body = &body};
    const kv_pred *p = plan(op);
    int rc = 0;
    if (op->one_part) {
        /* One partition of a search across daemons; a key equality elsewhere
         * cannot match here. */
        x.part = op->only_part;
        if (!(p && p->attr < 0 && op->part != op->only_part)) rc = search_partition(&x, p);
    } else if (p && p->attr < 0) {
        /* A key equality: only the key's partition can hold a match. */
        x.part = op->part;
        rc = search_partition(&x, p);
    } else {
        for (uint32_t part = 0; part < s->partitions && !rc && x.found < op->limit; part++) {
            x.part = part;
            rc = search_partition(&x, p);
        }
    }
    if (rc == 0) {
        if (op->kind == KV_COUNT) {
            resp_add_int(reply, (long long)x.found);
        } else {
            resp_add_array(reply, (long long)x.found);
            buf_append(reply, body.data, body.len);
        }
    }
    buf_free(&body);
    return rc;
}

/* ---- point operations ------------------------------------------------------ */

static void reply_notfound(buf *out, const space_schema *s)
{
    resp_add_errorf(out, "NOTFOUND no object with that key in space '%s'", s->name);
}

/* The semantics of every point command. oldv receives the decoded current
 * object (when exists) and newv the resulting one (KV_W_PUT); both point into
 * cur and op. r has been initialised. */
static int compute(const kv_op *op, const void *cur, size_t curlen, bool exists, obj_value *oldv,
                   obj_value *newv, kv_result *r)
{
    const space_schema *s = op->sp->schema;
    if (op->kind == KV_SEARCH || op->kind == KV_COUNT) return MDB_INVALID;
    if (exists && obj_decode(s, cur, curlen, oldv)) return MDB_CORRUPTED;
    switch (op->kind) {
    case KV_GET:
        if (!exists) {
            resp_add_nil(&r->reply);
        } else {
            resp_add_array(&r->reply, 2 * (long long)s->nattrs);
            add_object(&r->reply, s, oldv);
        }
        return 0;
    case KV_DEL:
        if (exists) r->write = KV_W_DEL;
        resp_add_int(&r->reply, exists ? 1 : 0);
        return 0;
    case KV_PUT:
    case KV_CPUT:
        if (op->kind == KV_CPUT) {
            if (!exists) {
                reply_notfound(&r->reply, s);
                return 0;
            }
            for (uint32_t i = 0; i < op->ncond; i++)
                if (obj_compare(&oldv[op->cond[i].attr], &op->cond[i].v) != 0) {
                    resp_add_errorf(&r->reply, "CMPFAIL attribute '%s' does not match",
                                    s->attrs[op->cond[i].attr].name);
                    return 0;
                }
        }
        if (exists)
            memcpy(newv, oldv, sizeof(obj_value) * s->nattrs);
        else
            obj_zero(s, newv);
        for (uint32_t i = 0; i < op->nset; i++)
            newv[op->set[i].attr] = op->set[i].v;
        r->write = KV_W_PUT;
        obj_encode(s, newv, &r->value);
        resp_add_simple(&r->reply, "OK");
        return 0;
    case KV_ADD: {
        if (!exists) {
            reply_notfound(&r->reply, s);
            return 0;
        }
        int64_t now = oldv[op->attr].u.i, res;
        if (__builtin_add_overflow(now, op->delta, &res)) {
            resp_add_errorf(&r->reply, "OVERFLOW attribute '%s' would overflow (%lld + %lld)",
                            s->attrs[op->attr].name, (long long)now, (long long)op->delta);
            return 0;
        }
        memcpy(newv, oldv, sizeof(obj_value) * s->nattrs);
        newv[op->attr].u.i = res;
        r->write = KV_W_PUT;
        obj_encode(s, newv, &r->value);
        resp_add_int(&r->reply, res);
        return 0;
    }
    }
    return MDB_INVALID;
}

static void result_init(kv_result *r)
{
    r->write = KV_W_NONE;
    buf_init(&r->value);
    buf_init(&r->reply);
}

int kv_compute(const kv_op *op, const void *cur, size_t curlen, bool exists, kv_result *out)
{
    obj_value oldv[SPACE_MAX_ATTRS], newv[SPACE_MAX_ATTRS];
    result_init(out);
    int rc = compute(op, cur, curlen, exists, oldv, newv, out);
    if (rc) {
        kv_result_free(out);
        result_init(out);
    }
    return rc;
}

void kv_result_free(kv_result *r)
{
    buf_free(&r->value);
    buf_free(&r->reply);
    r->write = KV_W_NONE;
}

int kv_exec(store_txn *t, const kv_op *op, buf *reply)
{
    if (op->kind == KV_SEARCH || op->kind == KV_COUNT) return exec_search(t, op, reply);
    const space_schema *s = op->sp->schema;
    obj_value oldv[SPACE_MAX_ATTRS], newv[SPACE_MAX_ATTRS];
    buf cur;
    bool exists;
    kv_result r;
    buf_init(&cur);
    result_init(&r);
    int rc = load_copy(t, op->sp->id, op->part, op->key, op->klen, &cur, &exists);
    if (rc) goto out;
    if ((rc = compute(op, cur.data, cur.len, exists, oldv, newv, &r))) goto out;
    if (r.write == KV_W_PUT)
        rc = store_obj_put(t, s, op->sp->id, op->part, op->key, op->klen, exists ? oldv : NULL,
                           newv, r.value.data, r.value.len);
    else if (r.write == KV_W_DEL)
        rc = store_obj_del(t, s, op->sp->id, op->part, op->key, op->klen, oldv);
    if (!rc && r.write != KV_W_NONE) rc = bump_seq(t, op);
    if (!rc) buf_append(reply, r.reply.data, r.reply.len);
out:
    kv_result_free(&r);
    buf_free(&cur);
    return rc;
}

/* ---- applying final states ------------------------------------------------- */

int kv_apply_put(store_txn *t, const kv_space *sp, uint32_t part, const void *key, size_t klen,
                 const void *enc, size_t enclen)
{
    const space_schema *s = sp->schema;
    obj_value oldv[SPACE_MAX_ATTRS], newv[SPACE_MAX_ATTRS];
    if (obj_decode(s, enc, enclen, newv)) return EINVAL;
    if (klen > STORE_MAX_KEY) return MDB_BAD_VALSIZE;
    buf cur;
    bool exists;
    buf_init(&cur);
    int rc = load_copy(t, sp->id, part, key, klen, &cur, &exists);
    if (!rc && exists && obj_decode(s, cur.data, cur.len, oldv)) rc = MDB_CORRUPTED;
    if (!rc)
        rc = store_obj_put(t, s, sp->id, part, key, klen, exists ? oldv : NULL, newv, enc,
                           enclen);
    buf_free(&cur);
    return rc;
}

int kv_apply_del(store_txn *t, const kv_space *sp, uint32_t part, const void *key, size_t klen)
{
    const space_schema *s = sp->schema;
    obj_value oldv[SPACE_MAX_ATTRS];
    if (klen > STORE_MAX_KEY) return MDB_BAD_VALSIZE;
    buf cur;
    bool exists;
    buf_init(&cur);
    int rc = load_copy(t, sp->id, part, key, klen, &cur, &exists);
    if (!rc && exists && obj_decode(s, cur.data, cur.len, oldv)) rc = MDB_CORRUPTED;
    if (!rc && exists) rc = store_obj_del(t, s, sp->id, part, key, klen, oldv);
    buf_free(&cur);
    return rc;
}
