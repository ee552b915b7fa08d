"""Every error of docs/protocol.md: the code word, the message where the
protocol fixes it, and that the request changed nothing (the whole visible
state — spaces, descriptions, every object, settings — is compared before and
after each error)."""

import pytest

from conftest import PHONEBOOK, Err

TYPED = "space typed\nkey k\nattributes s, int i, float f\nsubspace i\n"


class DB:
    def __init__(self, server, raw):
        self.c = raw(server)
        self.check = raw(server)
        assert self.c.cmd("SPACE.ADD", PHONEBOOK) == "OK"
        assert self.c.cmd("SPACE.ADD", TYPED) == "OK"
        for cmd in [
            ("PUT", "phonebook", "jsmith1", "first", "John", "last", "Smith", "phone", "6075551024"),
            ("PUT", "phonebook", "jd", "first", "John", "last", "Doe", "phone", "1"),
            ("PUT", "typed", "t1", "s", "str", "i", "5", "f", "2.5"),
            ("PUT", "typed", "max", "i", str(2 ** 63 - 1), "f", "1e300"),
            ("PUT", "typed", "min", "i", str(-2 ** 63), "f", "-1e300"),
        ]:
            assert self.c.cmd(*cmd) == "OK"
        self.keys = {"phonebook": ["jsmith1", "jd", "nobody", "new"],
                     "typed": ["t1", "max", "min", "nobody", "new"]}

    def snapshot(self):
        c = self.check
        snap = {"list": c.cmd("SPACE.LIST"),
                "config": [c.cmd("CLUSTER.CONFIG", "GET", n) for n in
                           ("heartbeat_ms", "ping_timeout_ms", "reprotect_delay_s",
                            "log_retention")]}
        for sp in snap["list"]:
            sp = sp.decode()
            snap["describe " + sp] = c.cmd("SPACE.DESCRIBE", sp)
            snap["search " + sp] = sorted(c.cmd("SEARCH", sp))
            for k in self.keys.get(sp, []):
                snap["get %s %s" % (sp, k)] = c.cmd("GET", sp, k)
        return snap

    def err(self, args, code, *fragments, exact=None):
        """Sends args, asserts an error with code (a str or a tuple of
        accepted codes) whose text holds every fragment, and that nothing
        changed. Returns the error."""
        before = self.snapshot()
        r = self.c.cmd(*args)
        codes = (code,) if isinstance(code, str) else code
        assert isinstance(r, Err), "%r answered %r, expected -%s" % (args, r, code)
        assert r.code in codes, "%r answered %r, expected -%s" % (args, r, code)
        for f in fragments:
            assert f in r, "%r answered %r, expected it to contain %r" % (args, r, f)
        if exact is not None:
            assert r == exact
        assert self.snapshot() == before, "%r changed the data" % (args,)
        # the connection is still usable
        assert self.c.cmd("PING") == "PONG"
        return r


@pytest.fixture
def db(server, raw):
    return DB(server, raw)


def test_unknown_command(db):
    r = db.err(("FROBNICATE", "x"), "ERR")
    assert "frobnicate" in r.lower()
    db.err(("HGETALL", "phonebook"), "ERR")
    db.err(("SPACE.FROB",), "ERR")
    db.err(("CLUSTER.FROB",), "ERR")
    db.c.send(b"NOPE a b\r\n")
    r = db.c.reply()
    assert isinstance(r, Err) and r.code == "ERR"


WRONG_ARGS = [
    ("PUT",), ("PUT", "phonebook"), ("PUT", "phonebook", "jsmith1", "first"),
    ("PUT", "phonebook", "jsmith1", "first", "J", "last"),
    ("GET",), ("GET", "phonebook"), ("GET", "phonebook", "jsmith1", "x"),
    ("DEL",), ("DEL", "phonebook"), ("DEL", "phonebook", "jsmith1", "x"),
    ("CPUT",), ("CPUT", "phonebook"), ("CPUT", "phonebook", "jsmith1"),
    ("CPUT", "phonebook", "jsmith1", "IF", "first", "John"),
    ("CPUT", "phonebook", "jsmith1", "SET", "first", "Jack"),
    ("CPUT", "phonebook", "jsmith1", "SET", "first", "Jack", "IF", "first", "John"),
    ("CPUT", "phonebook", "jsmith1", "IF", "first", "SET", "last", "x"),
    ("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "SET", "last"),
    ("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "IF", "last", "Smith",
     "SET", "phone", "1"),
    ("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "SET", "last", "x",
     "SET", "phone"),
    ("ADD",), ("ADD", "phonebook"), ("ADD", "phonebook", "jsmith1"),
    ("ADD", "phonebook", "jsmith1", "phone"), ("ADD", "phonebook", "jsmith1", "phone", "1", "2"),
    ("SEARCH",), ("SEARCH", "phonebook", "first"), ("SEARCH", "phonebook", "first", "="),
    ("SEARCH", "phonebook", "first", "=", "John", "last"),
    ("SEARCH", "phonebook", "first", "~", "John"), ("SEARCH", "phonebook", "first", "==", "John"),
    ("SEARCH", "phonebook", "first", "!=", "John"),
    ("SEARCH", "phonebook", "LIMIT"), ("SEARCH", "phonebook", "LIMIT", "x"),
    ("SEARCH", "phonebook", "LIMIT", "-1"), ("SEARCH", "phonebook", "LIMIT", "1.5"),
    ("COUNT",), ("COUNT", "phonebook", "first"), ("COUNT", "phonebook", "first", "="),
    ("COUNT", "phonebook", "first", "=", "John", "x"), ("COUNT", "phonebook", "first", "<>", "x"),
    ("SPACE.ADD",), ("SPACE.DROP",), ("SPACE.DROP", "phonebook", "typed"),
    ("SPACE.LIST", "x"), ("SPACE.DESCRIBE",), ("SPACE.DESCRIBE", "phonebook", "x"),
    ("CLUSTER.CONFIG",), ("CLUSTER.CONFIG", "GET"), ("CLUSTER.CONFIG", "GET", "heartbeat_ms", "x"),
    ("CLUSTER.CONFIG", "SET", "heartbeat_ms"), ("CLUSTER.CONFIG", "SET", "heartbeat_ms", "1", "2"),
    ("CLUSTER.CONFIG", "FROB", "heartbeat_ms"),
    ("PING", "a", "b"), ("ECHO",), ("ECHO", "a", "b"),
]


@pytest.mark.parametrize("args", WRONG_ARGS, ids=lambda a: " ".join(a))
def test_wrong_arguments(db, args):
    db.err(args, "ERR")


def test_cput_key_attribute_in_set(db):
    db.err(("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "SET", "username", "x"),
           ("ERR", "NOATTR"))


def test_unknown_space(db):
    msg = "NOSPACE no such space 'nospace'"
    for args in [("PUT", "nospace", "k", "a", "1"), ("PUT", "nospace", "k"), ("GET", "nospace", "k"),
                 ("DEL", "nospace", "k"), ("CPUT", "nospace", "k", "IF", "a", "1", "SET", "a", "2"),
                 ("ADD", "nospace", "k", "a", "1"), ("SEARCH", "nospace"),
                 ("SEARCH", "nospace", "a", "=", "1"), ("COUNT", "nospace"),
                 ("SPACE.DESCRIBE", "nospace"), ("SPACE.DROP", "nospace")]:
        db.err(args, "NOSPACE", exact=msg)


def test_unknown_attribute(db):
    msg = "NOATTR space 'phonebook' has no attribute 'age'"
    for args in [("PUT", "phonebook", "jsmith1", "age", "3"),
                 ("PUT", "phonebook", "jsmith1", "first", "Jo", "age", "3"),
                 ("PUT", "phonebook", "new", "age", "3"),
                 ("CPUT", "phonebook", "jsmith1", "IF", "age", "3", "SET", "first", "x"),
                 ("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "SET", "age", "3"),
                 ("ADD", "phonebook", "jsmith1", "age", "1"),
                 ("SEARCH", "phonebook", "age", "=", "3"),
                 ("SEARCH", "phonebook", "first", "=", "John", "age", ">", "3"),
                 ("COUNT", "phonebook", "age", "<", "3")]:
        db.err(args, "NOATTR", exact=msg)


BAD_INTS = ["abc", "1.5", "", " 1", "1 ", "0x10", "1e3", "--1", "+", "-",
            "9223372036854775808", "-9223372036854775809", "99999999999999999999999"]
BAD_FLOATS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "x", "", "1.5x", "1e999", "-1e999",
              "1,5", "1.5.5"]


def test_wrong_type_int(db):
    r = db.err(("PUT", "phonebook", "jsmith1", "phone", "abc"), "WRONGTYPE",
               exact="WRONGTYPE attribute 'phone' is int, got 'abc'")
    assert r
    for v in BAD_INTS:
        for args in [("PUT", "phonebook", "jsmith1", "phone", v),
                     ("PUT", "phonebook", "jsmith1", "first", "Changed", "phone", v),
                     ("PUT", "phonebook", "new", "phone", v),
                     ("PUT", "typed", "t1", "i", v),
                     ("CPUT", "phonebook", "jsmith1", "IF", "phone", v, "SET", "first", "x"),
                     ("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "SET", "phone", v),
                     ("SEARCH", "phonebook", "phone", ">", v),
                     ("COUNT", "typed", "i", "=", v),
                     ("ADD", "phonebook", "jsmith1", "phone", v)]:
            db.err(args, "WRONGTYPE", "int")


def test_wrong_type_float(db):
    db.err(("PUT", "typed", "t1", "f", "nan"), "WRONGTYPE",
           exact="WRONGTYPE attribute 'f' is float, got 'nan'")
    for v in BAD_FLOATS:
        for args in [("PUT", "typed", "t1", "f", v),
                     ("PUT", "typed", "t1", "s", "changed", "f", v),
                     ("PUT", "typed", "new", "f", v),
                     ("CPUT", "typed", "t1", "IF", "f", v, "SET", "s", "x"),
                     ("CPUT", "typed", "t1", "IF", "s", "str", "SET", "f", v),
                     ("SEARCH", "typed", "f", "<", v),
                     ("COUNT", "typed", "f", ">=", v)]:
            db.err(args, "WRONGTYPE", "'f'", "float")


def test_cmpfail_and_notfound(db):
    db.err(("CPUT", "phonebook", "jsmith1", "IF", "first", "Jack", "SET", "last", "x"), "CMPFAIL")
    db.err(("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "phone", "2", "SET", "last", "x"),
           "CMPFAIL")
    db.err(("CPUT", "typed", "t1", "IF", "f", "2.50001", "SET", "s", "x"), "CMPFAIL")
    db.err(("CPUT", "phonebook", "nobody", "IF", "first", "John", "SET", "last", "x"), "NOTFOUND")
    db.err(("ADD", "phonebook", "nobody", "phone", "1"), "NOTFOUND")


def test_add_errors(db):
    db.err(("ADD", "phonebook", "jsmith1", "first", "1"), "WRONGTYPE")
    db.err(("ADD", "typed", "t1", "s", "1"), "WRONGTYPE")
    db.err(("ADD", "typed", "t1", "f", "1"), "WRONGTYPE")
    db.err(("ADD", "typed", "max", "i", "1"), "OVERFLOW")
    db.err(("ADD", "typed", "max", "i", str(2 ** 63 - 1)), "OVERFLOW")
    db.err(("ADD", "typed", "min", "i", "-1"), "OVERFLOW")
    db.err(("ADD", "typed", "min", "i", str(-2 ** 63)), "OVERFLOW")
    db.err(("ADD", "typed", "t1", "i", "1.0"), "WRONGTYPE")
    # the limits themselves are reachable
    assert db.c.cmd("ADD", "typed", "max", "i", "0") == 2 ** 63 - 1
    assert db.c.cmd("ADD", "typed", "t1", "i", str(2 ** 63 - 1 - 5)) == 2 ** 63 - 1
    assert db.c.cmd("ADD", "typed", "min", "i", str(2 ** 63 - 1)) == -1


BAD_SPACES = [
    ("space bad\nkey username\nattributes first, last, integer phone", 3, "integer"),
    ("spaec bad\nkey k", 1, "spaec"),
    ("space bad\nkey k\nattributes a, a", 3, "a"),
    ("space bad\nkey k\nattributes a\nsubspace b", 4, "b"),
    ("space bad\nkey k\ncreate 0 partitions", 3, "0"),
    ("space bad\nkey k\ncreate 5000 partitions", 3, "5000"),
    ("space bad\nkey k\ncreate many partitions", 3, "many"),
    ("space bad\nkey k\ntolerate 99 failures", 3, "99"),
    ("space bad\nkey k\nfrobnicate yes", 3, "frobnicate"),
    ("space 1bad\nkey k", 1, "1bad"),
    ("space bad\nkey k\nattributes k", 3, "k"),
]


@pytest.mark.parametrize("text,line,word", BAD_SPACES, ids=[b[2] for b in BAD_SPACES])
def test_bad_space_description(db, text, line, word):
    db.err(("SPACE.ADD", text), "ERR", "line %d" % line, "'%s'" % word)


def test_bad_space_description_examples(db):
    db.err(("SPACE.ADD", "space phonebook2\nkey username\nattributes first, last, integer phone\n"
            "subspace first, last, phone"), "ERR",
           exact="ERR line 3: unknown type 'integer' for attribute 'phone'")
    db.err(("SPACE.ADD", "space bad attributes a"), "ERR", "key")
    db.err(("SPACE.ADD", "key k\nattributes a"), "ERR", "line 1", "space")
    db.err(("SPACE.ADD", ""), "ERR")
    db.err(("SPACE.ADD", "space bad key k attributes integer a"), "ERR", "line 1", "'integer'")
    db.err(("SPACE.ADD", "space", "bad", "key", "k", "create", "0", "partitions"), "ERR", "'0'")
    db.err(("SPACE.ADD", "space bad\nkey k\nattributes " + ", ".join("a%d" % i for i in range(200))),
           "ERR")


def test_duplicate_space(db):
    db.err(("SPACE.ADD", PHONEBOOK), "ERR", exact="ERR space 'phonebook' already exists")
    db.err(("SPACE.ADD", "space phonebook\nkey other\nattributes int x"), "ERR",
           exact="ERR space 'phonebook' already exists")


def test_drop_missing_space(db):
    db.err(("SPACE.DROP", "nope"), "NOSPACE", exact="NOSPACE no such space 'nope'")
    assert db.c.cmd("SPACE.DROP", "typed") == "OK"
    db.err(("SPACE.DROP", "typed"), "NOSPACE")


def test_settings(db):
    db.err(("CLUSTER.CONFIG", "GET", "foo"), "ERR", exact="ERR unknown setting 'foo'")
    db.err(("CLUSTER.CONFIG", "SET", "foo", "1"), "ERR", exact="ERR unknown setting 'foo'")
    for name in ("heartbeat_ms", "ping_timeout_ms", "reprotect_delay_s", "log_retention"):
        for v in ("abc", "-5", "", "1.5", "99999999999999999999999", "5x"):
            db.err(("CLUSTER.CONFIG", "SET", name, v), "ERR")


def test_key_too_long(db):
    k256, k257 = "k" * 256, "k" * 257
    msg = "ERR key exceeds max_key_bytes (256)"
    for args in [("PUT", "phonebook", k257, "first", "x"), ("GET", "phonebook", k257),
                 ("DEL", "phonebook", k257), ("ADD", "phonebook", k257, "phone", "1"),
                 ("CPUT", "phonebook", k257, "IF", "phone", "0", "SET", "phone", "1")]:
        db.err(args, "ERR", exact=msg)
    assert db.c.cmd("PUT", "phonebook", k256, "first", "x") == "OK"
    assert db.c.cmd("GET", "phonebook", k256)[1] == b"x"


def test_errors_in_a_pipeline_do_not_disturb_neighbours(db):
    replies = db.c.pipeline([
        ("PUT", "phonebook", "p1", "phone", "1"),
        ("PUT", "phonebook", "p1", "phone", "bad"),
        ("FROB",),
        ("GET", "phonebook", "p1"),
        ("ADD", "phonebook", "p1", "first", "1"),
        ("ADD", "phonebook", "p1", "phone", "1"),
    ])
    assert replies[0] == "OK"
    assert [r.code for r in replies[1:3]] == ["WRONGTYPE", "ERR"]
    assert replies[3] == [b"first", b"", b"last", b"", b"phone", 1]
    assert replies[4].code == "WRONGTYPE"
    assert replies[5] == 2
