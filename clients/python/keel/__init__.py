"""keel: Python client for the keel key-value store (standard library only).

The shape follows the HyperDex tutorial:

    import keel
    a = keel.Admin('127.0.0.1', 2012)
    a.add_space('''
        space phonebook
        key username
        attributes first, last, int phone
        subspace first, last, phone
        create 8 partitions
        tolerate 2 failures
    ''')
    c = keel.Client('127.0.0.1', 2012)
    c.put('phonebook', 'jsmith1', {'first': 'John', 'last': 'Smith', 'phone': 6075551024})
    c.get('phonebook', 'jsmith1')
    # {'first': 'John', 'last': 'Smith', 'phone': 6075551024}
    c.search('phonebook', {'first': 'John', 'phone': ('>=', 6075550000)})

Values are str, int, float or bytes. Replies come back typed by the space's
schema: int attributes as int (the server sends them as RESP integers), float
attributes as float, string attributes as str (UTF-8; bytes that are not UTF-8
are kept with errors='surrogateescape', so a value read back can be written
back unchanged). Which attributes are floats is learnt from SPACE.DESCRIBE,
cached per space and refreshed once when a reply does not fit the cache (an
unknown attribute, or a value of the wrong kind).

Errors raise KeelError with .code (the server's code word, e.g. 'NOSPACE') and
.message; connection problems raise KeelError with code 'CONNECTION'. After a
connection problem the next call connects again; no request is ever re-sent
automatically, so a write is never applied twice behind your back.

A Client or Admin may be shared between threads (calls are serialised); for
parallel requests use one Client per thread.

Invariants:
  1. Every public method sends exactly the commands documented in
     docs/protocol.md for it (atomic_add: one ADD per attribute, in the order
     given); nothing else is sent except SPACE.DESCRIBE for the schema cache.
  2. A method either returns a value built from well-formed replies or raises
     KeelError; it never returns partial results silently.
"""

from ._resp import Connection, KeelError, Status, to_bytes

__all__ = ["Client", "Admin", "KeelError", "OPS", "parse_description"]

OPS = ("=", "<", "<=", ">", ">=")

_TYPES = ("string", "int", "float")


def _text(b):
    return b.decode("utf-8", "surrogateescape")


def _check(reply):
    """Raises a KeelError reply; returns any other reply unchanged."""
    if isinstance(reply, KeelError):
        raise reply
    return reply


def _expect(cond, what):
    if not cond:
        raise KeelError("CONNECTION", "unexpected reply: %s" % what)


def parse_description(text):
    """Parses a canonical space description (as SPACE.DESCRIBE returns it)
    into (key_name, [(attr, type), ...]). Only the clauses the client needs
    are read; types default to 'string' as in the space language."""
    key_name = None
    attrs = []
    for line in text.splitlines():
        words = line.replace(",", " , ").split()
        if not words:
            continue
        if words[0] == "key" and len(words) >= 2:
            key_name = words[1]
        elif words[0] == "attributes":
            for item in " ".join(words[1:]).split(","):
                parts = item.split()
                if len(parts) == 1:
                    attrs.append((parts[0], "string"))
                elif len(parts) == 2 and parts[0] in _TYPES:
                    attrs.append((parts[1], parts[0]))
    return key_name, attrs


class _Schema:
    def __init__(self, key_name, attrs):
        self.key_name = key_name
        self.types = dict(attrs)


class _Base:
    def __init__(self, host="127.0.0.1", port=2012, timeout=10.0):
        self.host = host
        self.port = port
        self._conn = Connection(host, port, timeout)

    def close(self):
        """Closes the connection (a later call opens a new one)."""
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def execute(self, *args):
        """Sends one raw command; returns the reply (Status for +..., int,
        bytes, None, list) or raises KeelError for an error reply."""
        return _check(self._conn.call(*args))

    def ping(self):
        """True if the server answers PONG."""
        r = self.execute("PING")
        _expect(r == "PONG", "PING answered %r" % (r,))
        return True

    def _ok(self, *args):
        r = self.execute(*args)
        _expect(isinstance(r, Status) and r == "OK", "%s answered %r" % (args[0], r))
        return True


class Client(_Base):
    """Data operations on spaces. See the module documentation."""

    def __init__(self, host="127.0.0.1", port=2012, timeout=10.0):
        super().__init__(host, port, timeout)
        self._schemas = {}

    # -- schema cache -------------------------------------------------------

    def _schema(self, space, refresh=False):
        key = to_bytes(space)
        if refresh or key not in self._schemas:
            r = self.execute("SPACE.DESCRIBE", space)
            _expect(isinstance(r, bytes), "SPACE.DESCRIBE answered %r" % (r,))
            self._schemas[key] = _Schema(*parse_description(_text(r)))
        return self._schemas[key]

    def _decode_value(self, schema, name, value):
        """Decodes one attribute value by the schema; raises LookupError when
        the value does not fit what the schema says (a stale cache)."""
        t = schema.types.get(name)
        if t is None:
            raise LookupError(name)
        if isinstance(value, int):
            if t != "int":
                raise LookupError(name)
            return value
        if not isinstance(value, bytes) or t == "int":
            raise LookupError(name)
        if t == "float":
            try:
                return float(value)
            except ValueError:
                raise LookupError(name) from None
        return _text(value)

    def _decode_pairs(self, space, flat, skip_key):
        """Turns a flat [name, value, ...] reply into a dict. With skip_key,
        the first pair is the key under the key name and is kept as str."""
        _expect(isinstance(flat, list) and len(flat) % 2 == 0,
                "object reply %r" % (flat,))
        for i in range(0, len(flat), 2):
            _expect(isinstance(flat[i], bytes), "attribute name %r" % (flat[i],))
        for attempt in (0, 1):
            schema = self._schema(space, refresh=attempt == 1)
            out = {}
            try:
                for i in range(0, len(flat), 2):
                    name = _text(flat[i])
                    if skip_key and i == 0:
                        _expect(isinstance(flat[1], bytes), "key %r" % (flat[1],))
                        out[name] = _text(flat[1])
                    else:
                        out[name] = self._decode_value(schema, name, flat[i + 1])
                return out
            except LookupError as e:
                if attempt == 1:
                    raise KeelError("CONNECTION", "reply does not fit the schema of "
                                    "space %r (attribute %r)" % (space, str(e))) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _pairs(attrs):
        args = []
        for name, value in attrs.items():
            args.append(name)
            args.append(value)
        return args

    # -- data operations ----------------------------------------------------

    def put(self, space, key, attrs=None):
        """Creates the object or updates only the attributes given."""
        return self._ok("PUT", space, key, *self._pairs(attrs or {}))

    def get(self, space, key):
        """The object as {attr: value}, or None if it does not exist."""
        r = self.execute("GET", space, key)
        if r is None:
            return None
        return self._decode_pairs(space, r, skip_key=False)

    def delete(self, space, key):
        """True if the object existed."""
        r = self.execute("DEL", space, key)
        _expect(r in (0, 1) and not isinstance(r, bool), "DEL answered %r" % (r,))
        return r == 1

    def cond_put(self, space, key, condition, attrs):
        """Writes attrs only if every attribute in condition has the given
        value. True if applied, False if the condition did not hold
        (CMPFAIL). Raises KeelError 'NOTFOUND' if the object does not exist."""
        args = ["CPUT", space, key, "IF"] + self._pairs(condition) + ["SET"] + self._pairs(attrs)
        r = self._conn.call(*args)
        if isinstance(r, KeelError) and r.code == "CMPFAIL":
            return False
        r = _check(r)
        _expect(isinstance(r, Status) and r == "OK", "CPUT answered %r" % (r,))
        return True

    def atomic_add(self, space, key, deltas):
        """Adds each delta to its int attribute (one atomic ADD per
        attribute, in the order given; not atomic across attributes).
        Returns {attr: new value}."""
        out = {}
        for name, delta in deltas.items():
            r = self.execute("ADD", space, key, name, delta)
            _expect(isinstance(r, int), "ADD answered %r" % (r,))
            out[name] = r
        return out

    @staticmethod
    def _predicates(predicates):
        args = []
        for name, cond in (predicates or {}).items():
            conds = cond if isinstance(cond, list) else [cond]
            for c in conds:
                if isinstance(c, tuple):
                    if len(c) != 2 or c[0] not in OPS:
                        raise ValueError("predicate on %r must be (op, value) with op in %s"
                                         % (name, ", ".join(OPS)))
                    op, value = c
                else:
                    op, value = "=", c
                args += [name, op, value]
        return args

    def search(self, space, predicates=None, limit=None):
        """Objects matching every predicate, each a dict that includes the
        key under the space's key name. predicates maps an attribute to a
        value (equality), to (op, value) with op in '=', '<', '<=', '>',
        '>=', or to a list of such tuples (e.g. a range)."""
        args = ["SEARCH", space] + self._predicates(predicates)
        if limit is not None:
            args += ["LIMIT", int(limit)]
        r = self.execute(*args)
        _expect(isinstance(r, list), "SEARCH answered %r" % (r,))
        return [self._decode_pairs(space, o, skip_key=True) for o in r]

    def count(self, space, predicates=None):
        """Number of objects matching every predicate (as for search)."""
        r = self.execute("COUNT", space, *self._predicates(predicates))
        _expect(isinstance(r, int), "COUNT answered %r" % (r,))
        return r


class Admin(_Base):
    """Space and cluster administration."""

    def add_space(self, description):
        """Creates a space from its description in the space language."""
        return self._ok("SPACE.ADD", description)

    def rm_space(self, name):
        """Removes a space and all its objects."""
        return self._ok("SPACE.DROP", name)

    def list_spaces(self):
        """Space names, in creation order."""
        r = self.execute("SPACE.LIST")
        _expect(isinstance(r, list) and all(isinstance(x, bytes) for x in r),
                "SPACE.LIST answered %r" % (r,))
        return [_text(x) for x in r]

    def describe_space(self, name):
        """The canonical description of a space."""
        r = self.execute("SPACE.DESCRIBE", name)
        _expect(isinstance(r, bytes), "SPACE.DESCRIBE answered %r" % (r,))
        return _text(r)

    def config_get(self, name):
        r = self.execute("CLUSTER.CONFIG", "GET", name)
        _expect(isinstance(r, bytes), "CLUSTER.CONFIG GET answered %r" % (r,))
        return _text(r)

    def config_set(self, name, value):
        return self._ok("CLUSTER.CONFIG", "SET", name, value)
