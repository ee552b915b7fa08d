"""Every command of docs/protocol.md over a raw socket, with the exact reply
shapes (bytes on the wire where the protocol fixes them), pipelining and
inline (telnet-style) requests."""

import random

import pytest

from conftest import PHONEBOOK, Err, Simple, encode

PB_GET_JOHN = (b"*6\r\n$5\r\nfirst\r\n$4\r\nJohn\r\n$4\r\nlast\r\n$5\r\nSmith\r\n"
               b"$5\r\nphone\r\n:6075551024\r\n")


@pytest.fixture
def conn(server, raw):
    c = raw(server)
    assert c.cmd("SPACE.ADD", PHONEBOOK) == Simple("OK")
    return c


def put_john(c):
    return c.cmd("PUT", "phonebook", "jsmith1", "first", "John", "last", "Smith",
                 "phone", "6075551024")


# -- data commands --------------------------------------------------------------

def test_put_get_exact_bytes(conn):
    conn.send(encode("PUT", "phonebook", "jsmith1", "first", "John", "last", "Smith",
                     "phone", "6075551024"))
    assert conn.raw_reply() == b"+OK\r\n"
    conn.send(encode("GET", "phonebook", "jsmith1"))
    assert conn.raw_reply() == PB_GET_JOHN
    conn.send(encode("GET", "phonebook", "nobody"))
    assert conn.raw_reply() == b"$-1\r\n"


def test_put_partial_update_and_attribute_order(conn):
    put_john(conn)
    # Attributes given in any order; GET answers in schema order.
    assert conn.cmd("PUT", "phonebook", "jsmith1", "phone", "1", "first", "Jack") == "OK"
    assert conn.cmd("GET", "phonebook", "jsmith1") == [
        b"first", b"Jack", b"last", b"Smith", b"phone", 1]
    # The same attribute twice in one PUT: the last value wins... or an error;
    # either way the reply is one of the two and GET is consistent with it.
    r = conn.cmd("PUT", "phonebook", "jsmith1", "phone", "2", "phone", "3")
    got = conn.cmd("GET", "phonebook", "jsmith1")
    if isinstance(r, Err):
        assert got[5] == 1
    else:
        assert r == "OK" and got[5] == 3


def test_put_without_attributes(conn):
    conn.send(encode("PUT", "phonebook", "zero"))
    assert conn.raw_reply() == b"+OK\r\n"
    conn.send(encode("GET", "phonebook", "zero"))
    assert conn.raw_reply() == (b"*6\r\n$5\r\nfirst\r\n$0\r\n\r\n$4\r\nlast\r\n$0\r\n\r\n"
                                b"$5\r\nphone\r\n:0\r\n")
    put_john(conn)
    assert conn.cmd("PUT", "phonebook", "jsmith1") == "OK"
    conn.send(encode("GET", "phonebook", "jsmith1"))
    assert conn.raw_reply() == PB_GET_JOHN


def test_del(conn):
    put_john(conn)
    conn.send(encode("DEL", "phonebook", "jsmith1"))
    assert conn.raw_reply() == b":1\r\n"
    conn.send(encode("DEL", "phonebook", "jsmith1"))
    assert conn.raw_reply() == b":0\r\n"
    assert conn.cmd("GET", "phonebook", "jsmith1") is None
    assert conn.cmd("COUNT", "phonebook") == 0
    assert conn.cmd("SEARCH", "phonebook", "first", "=", "John") == []


def test_cput(conn):
    put_john(conn)
    conn.send(encode("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "phone",
                     "6075551024", "SET", "last", "Smyth", "phone", "7"))
    assert conn.raw_reply() == b"+OK\r\n"
    assert conn.cmd("GET", "phonebook", "jsmith1") == [
        b"first", b"John", b"last", b"Smyth", b"phone", 7]
    # Keywords are case-insensitive.
    assert conn.cmd("CPUT", "phonebook", "jsmith1", "if", "phone", "7", "set",
                    "phone", "8") == "OK"
    assert conn.cmd("GET", "phonebook", "jsmith1")[5] == 8
    r = conn.cmd("CPUT", "phonebook", "jsmith1", "IF", "phone", "7", "SET", "phone", "9")
    assert isinstance(r, Err) and r.code == "CMPFAIL"
    r = conn.cmd("CPUT", "phonebook", "jsmith1", "IF", "first", "John", "last", "Smith",
                 "SET", "phone", "9")
    assert isinstance(r, Err) and r.code == "CMPFAIL"
    assert conn.cmd("GET", "phonebook", "jsmith1")[5] == 8
    r = conn.cmd("CPUT", "phonebook", "nobody", "IF", "phone", "0", "SET", "phone", "1")
    assert isinstance(r, Err) and r.code == "NOTFOUND"
    assert conn.cmd("GET", "phonebook", "nobody") is None


def test_cput_on_string_float_and_empty_values(server, raw):
    c = raw(server)
    c.cmd("SPACE.ADD", "space m\nkey k\nattributes s, float f, int i")
    c.cmd("PUT", "m", "o")
    assert c.cmd("CPUT", "m", "o", "IF", "s", "", "f", "0", "i", "0", "SET", "s", "x",
                 "f", "0.5") == "OK"
    assert c.cmd("CPUT", "m", "o", "IF", "f", "0.50", "SET", "i", "3") == "OK"
    assert c.cmd("GET", "m", "o") == [b"s", b"x", b"f", b"0.5", b"i", 3]
    assert c.cmd("CPUT", "m", "o", "IF", "s", "X", "SET", "i", "4").code == "CMPFAIL"


def test_add(conn):
    put_john(conn)
    conn.send(encode("ADD", "phonebook", "jsmith1", "phone", "76"))
    assert conn.raw_reply() == b":6075551100\r\n"
    assert conn.cmd("ADD", "phonebook", "jsmith1", "phone", "-6075551100") == 0
    assert conn.cmd("ADD", "phonebook", "jsmith1", "phone", "-5") == -5
    assert conn.cmd("ADD", "phonebook", "jsmith1", "phone", "0") == -5
    assert conn.cmd("GET", "phonebook", "jsmith1") == [
        b"first", b"John", b"last", b"Smith", b"phone", -5]
    assert conn.cmd("ADD", "phonebook", "jsmith1", "phone", str(2 ** 63 - 1)) == 2 ** 63 - 6


def test_value_reply_forms(server, raw):
    c = raw(server)
    c.cmd("SPACE.ADD", "space v\nkey k\nattributes s, int i, float f")
    for text, wire in [("0.1", b"0.1"), ("2.5", b"2.5"), ("1e300", b"1e+300"),
                       ("-2.5", b"-2.5"), ("0.10000", b"0.1"), ("25e-1", b"2.5")]:
        assert c.cmd("PUT", "v", "o", "f", text) == "OK"
        c.send(encode("GET", "v", "o"))
        assert c.raw_reply() == (b"*6\r\n$1\r\ns\r\n$0\r\n\r\n$1\r\ni\r\n:0\r\n"
                                 b"$1\r\nf\r\n$%d\r\n%s\r\n" % (len(wire), wire))
    # Floats whose shortest form is not fixed by the protocol: they parse back
    # to the same double.
    for x in [1 / 3, 123456.789, -1e-300, 1.7976931348623157e308, 100.0, 5e-324]:
        assert c.cmd("PUT", "v", "o", "f", repr(x)) == "OK"
        assert float(c.cmd("GET", "v", "o")[5]) == x
    for text, val in [("-9223372036854775808", -2 ** 63), ("9223372036854775807", 2 ** 63 - 1),
                      ("+5", 5), ("-0", 0), ("007", 7)]:
        assert c.cmd("PUT", "v", "o", "i", text) == "OK", text
        c.send(encode("GET", "v", "o"))
        got = c.reply()
        assert got[3] == val and type(got[3]) is int
    blob = bytes(range(256))
    assert c.cmd("PUT", "v", "o", "s", blob) == "OK"
    assert c.cmd("GET", "v", "o")[1] == blob


# -- SEARCH and COUNT --------------------------------------------------------------

OPS = {"=": lambda a, b: a == b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
       ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}

LONG = "p" * 40  # longer than the 32-byte string prefix of index keys


def search_data():
    rng = random.Random(7)
    objs = {}
    names = ["", "a", "ab", "b", "bob", "Bob", "zed", LONG, LONG + "a", LONG + "b", LONG[:32],
             "\xff", "é"]
    for n in range(60):
        objs["k%02d" % n] = {
            "s": names[n % len(names)],
            "i": rng.choice([-2 ** 63, -5, -1, 0, 1, 2, 7, 100, 2 ** 63 - 1, rng.randint(-50, 50)]),
            "f": rng.choice([-1e300, -2.5, -0.0, 0.0, 0.1, 0.5, 1.0, 3.25, 1e300, rng.uniform(-9, 9)]),
        }
    return objs


def make_search_spaces(c):
    assert c.cmd("SPACE.ADD", "space ix\nkey k\nattributes s, int i, float f\n"
                 "subspace s\nsubspace i\nsubspace f\ncreate 4 partitions") == "OK"
    assert c.cmd("SPACE.ADD", "space sc\nkey k\nattributes s, int i, float f\n"
                 "create 3 partitions") == "OK"
    objs = search_data()
    cmds = []
    for sp in ("ix", "sc"):
        for k, o in objs.items():
            cmds.append(("PUT", sp, k, "s", o["s"], "i", str(o["i"]), "f", repr(o["f"])))
    assert all(r == "OK" for r in c.pipeline(cmds))
    return objs


def keyset(reply):
    out = set()
    for o in reply:
        assert o[0] == b"k"
        out.add(o[1].decode())
    return out


def test_search_every_op_indexed_and_scanned_agree(server, raw):
    c = raw(server)
    objs = make_search_spaces(c)
    probes = {
        "s": ["", "a", "b", "bob", LONG, LONG + "a", LONG[:32], "zzz", "\xff"],
        "i": [-2 ** 63, -5, 0, 1, 7, 2 ** 63 - 1],
        "f": [-1e300, -2.5, 0.0, 0.1, 1.0, 1e300],
    }
    enc = {"s": lambda v: v.encode("utf-8"), "i": str, "f": repr}
    keyenc = {"s": lambda v: v.encode("utf-8"), "i": lambda v: v, "f": lambda v: v}
    for attr, values in probes.items():
        for v in values:
            for op, fn in OPS.items():
                want = {k for k, o in objs.items() if fn(keyenc[attr](o[attr]), keyenc[attr](v))}
                for sp in ("ix", "sc"):
                    r = c.cmd("SEARCH", sp, attr, op, enc[attr](v))
                    assert keyset(r) == want, (sp, attr, op, v)
                    assert c.cmd("COUNT", sp, attr, op, enc[attr](v)) == len(want)


def test_search_reply_shape_and_conjunctions(server, raw):
    c = raw(server)
    objs = make_search_spaces(c)
    k, o = "k05", objs["k05"]
    for sp in ("ix", "sc"):
        r = c.cmd("SEARCH", sp, "k", "=", k)
        assert r == [[b"k", k.encode(), b"s", o["s"].encode(), b"i", o["i"],
                      b"f", c.cmd("GET", sp, k)[5]]]
        assert float(r[0][7]) == o["f"]
        # conjunction of an indexed range and a scanned predicate
        want = {kk for kk, oo in objs.items() if -5 <= oo["i"] < 100 and oo["f"] > 0}
        r = c.cmd("SEARCH", sp, "i", ">=", "-5", "i", "<", "100", "f", ">", "0")
        assert keyset(r) == want
        assert c.cmd("COUNT", sp, "i", ">=", "-5", "i", "<", "100", "f", ">", "0") == len(want)
        # contradictory predicates
        assert c.cmd("SEARCH", sp, "i", ">", "5", "i", "<", "5") == []
        # key name predicates compare as strings
        assert keyset(c.cmd("SEARCH", sp, "k", "<", "k03")) == {"k00", "k01", "k02"}
        assert keyset(c.cmd("SEARCH", sp, "k", ">=", "k58")) == {"k58", "k59"}
        assert c.cmd("COUNT", sp) == len(objs)
        assert keyset(c.cmd("SEARCH", sp)) == set(objs)


def test_search_limit(server, raw):
    c = raw(server)
    objs = make_search_spaces(c)
    allk = set(objs)
    for sp in ("ix", "sc"):
        for n in (0, 1, 5, 59, 60, 1000):
            r = c.cmd("SEARCH", sp, "LIMIT", str(n))
            assert len(r) == min(n, 60)
            assert keyset(r) <= allk
        want = {k for k, o in objs.items() if o["i"] >= 0}
        r = c.cmd("SEARCH", sp, "i", ">=", "0", "limit", "3")
        assert len(r) == min(3, len(want)) and keyset(r) <= want


def test_search_empty_space_and_after_delete(conn):
    assert conn.cmd("SEARCH", "phonebook") == []
    assert conn.cmd("COUNT", "phonebook") == 0
    put_john(conn)
    assert conn.cmd("SEARCH", "phonebook", "first", "=", "John") == [
        [b"username", b"jsmith1", b"first", b"John", b"last", b"Smith", b"phone", 6075551024]]
    # An update moves the object in the index.
    conn.cmd("PUT", "phonebook", "jsmith1", "first", "Jim")
    assert conn.cmd("SEARCH", "phonebook", "first", "=", "John") == []
    assert conn.cmd("COUNT", "phonebook", "first", "=", "Jim") == 1
    conn.cmd("ADD", "phonebook", "jsmith1", "phone", "1")
    assert conn.cmd("COUNT", "phonebook", "phone", "=", "6075551024") == 0
    assert conn.cmd("COUNT", "phonebook", "phone", "=", "6075551025") == 1
    conn.cmd("CPUT", "phonebook", "jsmith1", "IF", "first", "Jim", "SET", "last", "Jones")
    assert conn.cmd("COUNT", "phonebook", "last", "=", "Smith") == 0
    assert conn.cmd("COUNT", "phonebook", "last", "=", "Jones") == 1
    conn.cmd("DEL", "phonebook", "jsmith1")
    assert conn.cmd("SEARCH", "phonebook", "first", "=", "Jim") == []
    assert conn.cmd("COUNT", "phonebook", "phone", ">", "0") == 0


# -- administration ------------------------------------------------------------

PB_CANON = (b"space phonebook\nkey username\nattributes string first, string last, int phone\n"
            b"subspace first, last, phone\ncreate 8 partitions\ntolerate 2 failures\n")


def test_space_add_forms_list_describe(server, raw):
    c = raw(server)
    c.send(encode("SPACE.ADD", PHONEBOOK))
    assert c.raw_reply() == b"+OK\r\n"
    # one line
    assert c.cmd("SPACE.ADD", "space kv key k attributes v") == "OK"
    # split over several arguments
    assert c.cmd("SPACE.ADD", "space", "kv2", "key", "k", "attributes", "int", "n,", "float",
                 "x") == "OK"
    c.send(encode("SPACE.LIST"))
    assert c.raw_reply() == b"*3\r\n$9\r\nphonebook\r\n$2\r\nkv\r\n$3\r\nkv2\r\n"
    c.send(encode("SPACE.DESCRIBE", "phonebook"))
    assert c.raw_reply() == b"$%d\r\n%s\r\n" % (len(PB_CANON), PB_CANON)
    kv = c.cmd("SPACE.DESCRIBE", "kv").decode()
    lines = kv.splitlines()
    assert kv.endswith("\n")
    assert lines[:3] == ["space kv", "key k", "attributes string v"]
    assert "create 8 partitions" in lines and "tolerate 1 failures" in lines
    kv2 = c.cmd("SPACE.DESCRIBE", "kv2").decode()
    assert "attributes int n, float x" in kv2.splitlines()
    # The canonical text round-trips.
    assert c.cmd("SPACE.DROP", "phonebook") == "OK"
    assert c.cmd("SPACE.ADD", PB_CANON) == "OK"
    assert c.cmd("SPACE.DESCRIBE", "phonebook") == PB_CANON
    assert c.cmd("SPACE.LIST") == [b"kv", b"kv2", b"phonebook"]


def test_space_language_details(server, raw):
    c = raw(server)
    text = ("# a comment\n\nspace  weird\n\tkey id\nattributes a,b ,  int c,float d\n"
            "subspace a\nsubspace c, d\ncreate 16 partitions\ntolerate 0 failures\n")
    assert c.cmd("SPACE.ADD", text) == "OK"
    d = c.cmd("SPACE.DESCRIBE", "weird").decode().splitlines()
    assert d[0] == "space weird" and d[1] == "key id"
    assert "attributes string a, string b, int c, float d" in d
    assert "subspace a" in d and "subspace c, d" in d
    assert "create 16 partitions" in d and "tolerate 0 failures" in d
    # no attributes at all
    assert c.cmd("SPACE.ADD", "space bare\nkey k") == "OK"
    assert c.cmd("PUT", "bare", "x") == "OK"
    assert c.cmd("GET", "bare", "x") == []
    assert c.cmd("GET", "bare", "y") is None
    assert c.cmd("SEARCH", "bare") == [[b"k", b"x"]]


def test_space_drop_removes_objects(conn):
    put_john(conn)
    conn.send(encode("SPACE.DROP", "phonebook"))
    assert conn.raw_reply() == b"+OK\r\n"
    assert conn.cmd("SPACE.LIST") == []
    assert conn.cmd("GET", "phonebook", "jsmith1").code == "NOSPACE"
    assert conn.cmd("SPACE.ADD", PHONEBOOK) == "OK"
    assert conn.cmd("GET", "phonebook", "jsmith1") is None
    assert conn.cmd("COUNT", "phonebook") == 0
    assert conn.cmd("SEARCH", "phonebook", "first", "=", "John") == []


def test_cluster_config(server, raw):
    c = raw(server)
    defaults = {"heartbeat_ms": b"250", "ping_timeout_ms": b"3000",
                "reprotect_delay_s": b"60", "log_retention": b"1000000"}
    for name, value in defaults.items():
        c.send(encode("CLUSTER.CONFIG", "GET", name))
        assert c.raw_reply() == b"$%d\r\n%s\r\n" % (len(value), value)
    c.send(encode("CLUSTER.CONFIG", "SET", "ping_timeout_ms", "4500"))
    assert c.raw_reply() == b"+OK\r\n"
    assert c.cmd("CLUSTER.CONFIG", "GET", "ping_timeout_ms") == b"4500"
    assert c.cmd("cluster.config", "set", "reprotect_delay_s", "5") == "OK"
    assert c.cmd("CLUSTER.CONFIG", "get", "reprotect_delay_s") == b"5"
    assert c.cmd("CLUSTER.CONFIG", "GET", "heartbeat_ms") == b"250"


def test_ping_echo_quit(server, raw):
    c = raw(server)
    c.send(encode("PING"))
    assert c.raw_reply() == b"+PONG\r\n"
    c.send(encode("PING", "hello there"))
    assert c.raw_reply() == b"$11\r\nhello there\r\n"
    msg = b"bin\x00\r\n\xff" * 100
    c.send(encode("ECHO", msg))
    assert c.raw_reply() == b"$%d\r\n%s\r\n" % (len(msg), msg)
    c.send(encode("ECHO", ""))
    assert c.raw_reply() == b"$0\r\n\r\n"
    # Command names are case-insensitive.
    assert c.cmd("ping") == "PONG" and c.cmd("Echo", "x") == b"x"
    c.send(encode("QUIT"))
    assert c.raw_reply() == b"+OK\r\n"
    assert c.is_closed()
    # The server goes on serving others.
    assert raw(server).cmd("PING") == "PONG"


def test_info(server, raw):
    c = raw(server)
    for args in (("INFO",), ("INFO", "server"), ("info",)):
        r = c.cmd(*args)
        assert isinstance(r, bytes) and r
        lines = [ln for ln in r.decode().replace("\r\n", "\n").split("\n") if ln]
        assert lines[0].startswith("# ")
        for ln in lines:
            assert ln.startswith("# ") or (":" in ln and not ln.startswith(":")), ln
    assert c.cmd("PING") == "PONG"


def test_commands_are_case_insensitive(server, raw):
    c = raw(server)
    assert c.cmd("space.add", PHONEBOOK) == "OK"
    assert c.cmd("pUt", "phonebook", "a", "first", "A") == "OK"
    assert c.cmd("get", "phonebook", "a")[1] == b"A"
    assert c.cmd("count", "phonebook") == 1
    assert c.cmd("Space.List") == [b"phonebook"]
    # ...but space names, attributes and keys are not.
    assert c.cmd("GET", "PHONEBOOK", "a").code == "NOSPACE"
    assert c.cmd("GET", "phonebook", "A") is None
    assert c.cmd("PUT", "phonebook", "a", "FIRST", "x").code == "NOATTR"


# -- pipelining and inline commands ------------------------------------------------

def test_pipeline_in_one_write(conn):
    cmds = []
    for i in range(300):
        cmds.append(("PUT", "phonebook", "p%d" % i, "phone", str(i)))
        cmds.append(("GET", "phonebook", "p%d" % i))
        if i % 50 == 0:
            cmds.append(("GET", "nospace", "x"))
            cmds.append(("PING", "m%d" % i))
    cmds.append(("COUNT", "phonebook"))
    replies = conn.pipeline(cmds)
    for cmd, r in zip(cmds, replies):
        if cmd[0] == "PUT":
            assert r == "OK"
        elif cmd[0] == "GET" and cmd[1] == "phonebook":
            i = int(cmd[2][1:])
            assert r == [b"first", b"", b"last", b"", b"phone", i]
        elif cmd[0] == "GET":
            assert isinstance(r, Err) and r.code == "NOSPACE"
        elif cmd[0] == "PING":
            assert r == cmd[1].encode()
    assert replies[-1] == 300


def test_pipeline_read_your_writes(conn):
    replies = conn.pipeline([
        ("PUT", "phonebook", "x", "phone", "1"),
        ("ADD", "phonebook", "x", "phone", "1"),
        ("GET", "phonebook", "x"),
        ("CPUT", "phonebook", "x", "IF", "phone", "2", "SET", "first", "two"),
        ("GET", "phonebook", "x"),
        ("DEL", "phonebook", "x"),
        ("GET", "phonebook", "x"),
        ("DEL", "phonebook", "x"),
        ("SEARCH", "phonebook", "phone", ">=", "0"),
    ])
    assert replies == ["OK", 2, [b"first", b"", b"last", b"", b"phone", 2], "OK",
                       [b"first", b"two", b"last", b"", b"phone", 2], 1, None, 0, []]


def test_pipeline_split_at_every_byte(conn):
    data = encode("PUT", "phonebook", "s", "first", "Split") + encode("GET", "phonebook", "s") \
        + b"PING\r\n"
    for b in data:
        conn.send(bytes([b]))
    assert conn.reply() == "OK"
    assert conn.reply() == [b"first", b"Split", b"last", b"", b"phone", 0]
    assert conn.reply() == "PONG"


def test_inline_commands(conn):
    conn.send(b"PING\r\n")
    assert conn.raw_reply() == b"+PONG\r\n"
    conn.send(b"ping\n")
    assert conn.raw_reply() == b"+PONG\r\n"
    conn.send(b"\r\n\r\nPING\r\n")  # empty lines are skipped
    assert conn.raw_reply() == b"+PONG\r\n"
    conn.send(b"ECHO \"hello world\"\r\n")
    assert conn.raw_reply() == b"$11\r\nhello world\r\n"
    conn.send(b"ECHO \"a\\tb\\x41\\\"\\n\"\r\n")
    assert conn.reply() == b"a\tbA\"\n"
    conn.send(b"ECHO 'single quoted'\r\n")
    assert conn.reply() == b"single quoted"
    conn.send(b"PUT phonebook \"j smith\"   first  \"John Q\"\tphone 42\r\n")
    assert conn.reply() == "OK"
    assert conn.cmd("GET", "phonebook", "j smith") == [
        b"first", b"John Q", b"last", b"", b"phone", 42]
    conn.send(b"GET phonebook \"j smith\"\r\nCOUNT phonebook\r\n")
    assert conn.reply() == [b"first", b"John Q", b"last", b"", b"phone", 42]
    assert conn.reply() == 1
    conn.send(b"SPACE.ADD space tel key k attributes int n\r\n")
    assert conn.reply() == "OK"
    assert conn.cmd("SPACE.LIST") == [b"phonebook", b"tel"]
    # inline and multibulk mixed in one write
    conn.send(b"PING a\r\n" + encode("PING", "b") + b"PING c\n")
    assert [conn.reply(), conn.reply(), conn.reply()] == [b"a", b"b", b"c"]
    conn.send(b"QUIT\r\n")
    assert conn.reply() == "OK"
    assert conn.is_closed()


def test_connections_are_independent(server, raw):
    a, b = raw(server), raw(server)
    a.cmd("SPACE.ADD", PHONEBOOK)
    a.send(b"*3\r\n$3\r\nGET\r\n$9\r\nphonebook\r\n")  # incomplete request on a
    assert b.cmd("PUT", "phonebook", "k", "first", "B") == "OK"
    a.send(b"$1\r\nk\r\n")
    assert a.reply() == [b"first", b"B", b"last", b"", b"phone", 0]
