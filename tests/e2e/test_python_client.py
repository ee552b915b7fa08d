"""The Python client against a real `keel standalone`: the HyperDex tutorial
chapter flow on the phonebook space, typed round trips (int, float, unicode,
binary-ish strings), the schema cache, and error/connection handling."""

import socket
import threading

import pytest

import keel
from conftest import PHONEBOOK

JOHN = {"first": "John", "last": "Smith", "phone": 6075551024}


@pytest.fixture
def pb(server):
    """(admin, client) with the tutorial's phonebook space created."""
    a = server.admin()
    a.add_space(PHONEBOOK)
    return a, server.client()


def usernames(objs):
    return sorted(o["username"] for o in objs)


def test_tutorial_flow(server):
    a = server.admin()
    assert a.list_spaces() == []
    assert a.add_space(PHONEBOOK) is True
    assert a.list_spaces() == ["phonebook"]
    assert a.describe_space("phonebook") == (
        "space phonebook\nkey username\n"
        "attributes string first, string last, int phone\n"
        "subspace first, last, phone\ncreate 8 partitions\ntolerate 2 failures\n")

    c = server.client()
    assert c.put("phonebook", "jsmith1", JOHN) is True
    got = c.get("phonebook", "jsmith1")
    assert got == JOHN
    assert type(got["phone"]) is int and type(got["first"]) is str

    # A partial update keeps the other attributes.
    c.put("phonebook", "jsmith1", {"phone": 6075551025})
    assert c.get("phonebook", "jsmith1") == dict(JOHN, phone=6075551025)

    c.put("phonebook", "jd", {"first": "John", "last": "Doe", "phone": 6075557878})
    c.put("phonebook", "bwayne", {"first": "Bruce", "last": "Wayne", "phone": 6075550001})

    found = c.search("phonebook", {"first": "John"})
    assert usernames(found) == ["jd", "jsmith1"]
    assert {"username": "jsmith1", "first": "John", "last": "Smith",
            "phone": 6075551025} in found
    assert c.search("phonebook", {"first": "John", "last": "Doe"}) == [
        {"username": "jd", "first": "John", "last": "Doe", "phone": 6075557878}]
    assert c.search("phonebook", {"first": "Nobody"}) == []

    # Ranges on phone: single ops and a two-sided range.
    assert usernames(c.search("phonebook", {"phone": ("<", 6075551025)})) == ["bwayne"]
    assert usernames(c.search("phonebook", {"phone": ("<=", 6075551025)})) == ["bwayne", "jsmith1"]
    assert usernames(c.search("phonebook", {"phone": (">", 6075551025)})) == ["jd"]
    assert usernames(c.search("phonebook", {"phone": (">=", 6075551025)})) == ["jd", "jsmith1"]
    assert usernames(c.search("phonebook", {"phone": ("=", 6075550001)})) == ["bwayne"]
    assert usernames(c.search("phonebook", {"phone": [(">", 6075550001), ("<", 6075557878)]})) \
        == ["jsmith1"]
    assert usernames(c.search("phonebook", {"first": "John", "phone": (">=", 6075557000)})) == ["jd"]
    # The key name works as a predicate.
    assert usernames(c.search("phonebook", {"username": ("<", "c")})) == ["bwayne"]
    assert len(c.search("phonebook", {}, limit=2)) == 2
    assert len(c.search("phonebook", {"first": "John"}, limit=1)) == 1

    # cond_put: applied when the condition holds, refused (False) otherwise.
    assert c.cond_put("phonebook", "jsmith1", {"last": "Smith"}, {"last": "Smith-Jones"}) is True
    assert c.get("phonebook", "jsmith1")["last"] == "Smith-Jones"
    assert c.cond_put("phonebook", "jsmith1", {"last": "Smith"}, {"first": "Jack"}) is False
    assert c.get("phonebook", "jsmith1") == {"first": "John", "last": "Smith-Jones",
                                             "phone": 6075551025}
    with pytest.raises(keel.KeelError) as ei:
        c.cond_put("phonebook", "nobody", {"last": "Smith"}, {"first": "Jack"})
    assert ei.value.code == "NOTFOUND"

    # atomic_add: one ADD per attribute, answers the new values.
    assert c.atomic_add("phonebook", "jsmith1", {"phone": 10}) == {"phone": 6075551035}
    assert c.atomic_add("phonebook", "jsmith1", {"phone": -35}) == {"phone": 6075551000}
    assert c.get("phonebook", "jsmith1")["phone"] == 6075551000

    assert c.count("phonebook") == 3
    assert c.count("phonebook", {"first": "John"}) == 2
    assert c.count("phonebook", {"phone": (">", 6075550001)}) == 2

    assert c.delete("phonebook", "jsmith1") is True
    assert c.get("phonebook", "jsmith1") is None
    assert c.delete("phonebook", "jsmith1") is False
    assert c.count("phonebook") == 2

    assert a.rm_space("phonebook") is True
    assert a.list_spaces() == []
    with pytest.raises(keel.KeelError) as ei:
        c.get("phonebook", "jd")
    assert ei.value.code == "NOSPACE"


def test_put_without_attributes_gives_zero_values(pb):
    _, c = pb
    c.put("phonebook", "empty")
    assert c.get("phonebook", "empty") == {"first": "", "last": "", "phone": 0}
    c.put("phonebook", "empty", {"first": "X"})
    c.put("phonebook", "empty")
    assert c.get("phonebook", "empty") == {"first": "X", "last": "", "phone": 0}


def test_int_and_float_round_trip(server):
    a = server.admin()
    a.add_space("space nums\nkey k\nattributes int i, float f\nsubspace i, f\n")
    c = server.client()
    ints = [0, 1, -1, 42, 2 ** 63 - 1, -2 ** 63, 6075551024]
    floats = [0.1, -2.5, 1e300, 0.0, 1.0, -1e-300, 2.0 ** -1074, 1.7976931348623157e308,
              123456.789, 1 / 3]
    for n, (i, f) in enumerate(zip(ints + ints, floats)):
        c.put("nums", "k%d" % n, {"i": i, "f": f})
        got = c.get("nums", "k%d" % n)
        assert got == {"i": i, "f": f}
        assert type(got["i"]) is int and type(got["f"]) is float
    # ints are accepted for float attributes
    c.put("nums", "intf", {"f": 7})
    assert c.get("nums", "intf") == {"i": 0, "f": 7.0}
    # floats compare numerically in searches
    found = c.search("nums", {"f": [(">", 0.0), ("<", 1.0)]})
    assert sorted(o["f"] for o in found) == sorted(x for x in floats if 0.0 < x < 1.0)
    assert all(type(o["f"]) is float and type(o["i"]) is int for o in found)
    assert c.count("nums", {"f": ("<", 0.0)}) == 2  # -2.5 and -1e-300


def test_strings_unicode_and_binary(server):
    a = server.admin()
    a.add_space("space s\nkey k\nattributes a, b\n")
    c = server.client()
    values = ["Zoë", "日本語テキスト", "emoji \U0001F600", "", " spaces  ", "tab\tnew\nline\r\n",
              "quote\"'\\", "$5\r\n*1\r\n", "\x00nul\x00"]
    for n, v in enumerate(values):
        c.put("s", "u%d" % n, {"a": v})
        assert c.get("s", "u%d" % n) == {"a": v, "b": ""}
    blob = bytes(range(256)) * 4
    c.put("s", "bin", {"a": blob, "b": b"\xff\xfe\x00\x80"})
    got = c.get("s", "bin")
    # Not UTF-8: surrogateescape keeps every byte, so the value writes back unchanged.
    assert got["a"].encode("utf-8", "surrogateescape") == blob
    assert got["b"].encode("utf-8", "surrogateescape") == b"\xff\xfe\x00\x80"
    c.put("s", "copy", got)
    assert c.get("s", "copy") == got
    # Keys are byte strings too.
    c.put("s", "ключ \x01", {"a": "x"})
    c.put("s", b"\xffkey", {"a": "y"})
    assert c.get("s", "ключ \x01") == {"a": "x", "b": ""}
    assert c.get("s", b"\xffkey") == {"a": "y", "b": ""}
    keys = sorted(o["k"] for o in c.search("s", {"a": "y"}))
    assert keys == ["\udcffkey"]
    assert c.search("s", {"k": "ключ \x01"}) == [{"k": "ключ \x01", "a": "x", "b": ""}]


def test_schema_cache_refreshes_when_the_space_changes(server):
    a = server.admin()
    c = server.client()
    a.add_space("space t\nkey k\nattributes int x\n")
    c.put("t", "o", {"x": 5})
    assert c.get("t", "o") == {"x": 5}
    # Same name, new schema: x is now a float and y is new. The client notices
    # the surprise (a bulk value for a cached int, an unknown attribute).
    a.rm_space("t")
    a.add_space("space t\nkey k\nattributes float x, string y\n")
    c.put("t", "o", {"x": 2.5, "y": "new"})
    assert c.get("t", "o") == {"x": 2.5, "y": "new"}
    assert c.search("t", {"x": 2.5}) == [{"k": "o", "x": 2.5, "y": "new"}]


def test_error_codes(pb):
    _, c = pb
    c.put("phonebook", "jsmith1", JOHN)
    cases = [
        (lambda: c.get("nospace", "x"), "NOSPACE"),
        (lambda: c.put("phonebook", "jsmith1", {"age": 3}), "NOATTR"),
        (lambda: c.put("phonebook", "jsmith1", {"phone": "abc"}), "WRONGTYPE"),
        (lambda: c.atomic_add("phonebook", "jsmith1", {"first": 1}), "WRONGTYPE"),
        (lambda: c.atomic_add("phonebook", "nobody", {"phone": 1}), "NOTFOUND"),
        (lambda: c.search("phonebook", {"age": 3}), "NOATTR"),
        (lambda: c.count("nospace"), "NOSPACE"),
        (lambda: c.execute("NOSUCHCOMMAND"), "ERR"),
    ]
    for fn, code in cases:
        with pytest.raises(keel.KeelError) as ei:
            fn()
        assert ei.value.code == code, ei.value
        assert ei.value.message
        assert str(ei.value).startswith(code + " ")
    c.put("phonebook", "big", {"phone": 2 ** 63 - 1})
    with pytest.raises(keel.KeelError) as ei:
        c.atomic_add("phonebook", "big", {"phone": 1})
    assert ei.value.code == "OVERFLOW"
    assert c.get("phonebook", "big")["phone"] == 2 ** 63 - 1
    assert c.get("phonebook", "jsmith1") == JOHN
    # The connection is still usable after error replies.
    assert c.ping() is True
    with pytest.raises(ValueError):
        c.search("phonebook", {"phone": ("~", 1)})


def test_admin_operations(server):
    a = server.admin()
    a.add_space("space one\nkey k\nattributes v")
    a.add_space(PHONEBOOK)
    a.add_space("space two key k attributes int n")
    assert a.list_spaces() == ["one", "phonebook", "two"]
    assert "attributes int n" in a.describe_space("two")
    with pytest.raises(keel.KeelError) as ei:
        a.add_space(PHONEBOOK)
    assert ei.value.code == "ERR"
    with pytest.raises(keel.KeelError) as ei:
        a.rm_space("nope")
    assert ei.value.code == "NOSPACE"
    a.rm_space("one")
    assert a.list_spaces() == ["phonebook", "two"]
    assert a.config_get("heartbeat_ms") == "250"
    assert a.config_set("heartbeat_ms", 300) is True
    assert a.config_get("heartbeat_ms") == "300"
    with pytest.raises(keel.KeelError) as ei:
        a.config_get("nope")
    assert ei.value.code == "ERR"
    assert a.ping() is True


def test_context_manager_closes(server):
    server.add_phonebook()
    with keel.Client(server.host, server.port) as c:
        c.put("phonebook", "a", {"first": "A"})
        assert c._conn._sock is not None
    assert c._conn._sock is None
    # A closed client connects again on its next call.
    assert c.get("phonebook", "a")["first"] == "A"
    c.close()


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = keel.Client("127.0.0.1", port, timeout=2.0)
    with pytest.raises(keel.KeelError) as ei:
        c.ping()
    assert ei.value.code == "CONNECTION"


def test_timeout_is_a_connection_error():
    # A listener that accepts and never answers.
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = keel.Client("127.0.0.1", ls.getsockname()[1], timeout=0.3)
        with pytest.raises(keel.KeelError) as ei:
            c.get("phonebook", "x")
        assert ei.value.code == "CONNECTION"
        c.close()


def test_server_going_away_and_coming_back(server):
    server.add_phonebook()
    c = keel.Client(server.host, server.port, timeout=5.0)
    c.put("phonebook", "a", {"phone": 1})
    server.stop()
    with pytest.raises(keel.KeelError) as ei:
        c.get("phonebook", "a")
    assert ei.value.code == "CONNECTION"
    server.restart()
    c = keel.Client(server.host, server.port, timeout=5.0)
    assert c.get("phonebook", "a") == {"first": "", "last": "", "phone": 1}
    c.close()


def test_client_shared_between_threads(pb):
    _, c = pb
    errors = []

    def work(t):
        try:
            for i in range(50):
                c.put("phonebook", "t%d-%d" % (t, i), {"phone": i})
                assert c.get("phonebook", "t%d-%d" % (t, i))["phone"] == i
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors
    assert c.count("phonebook") == 200
