"""The Python client's direct routing (clients/python/keel, "Direct routing"),
without a real cluster.

- XXH64: keel._xxh64 (pure Python) against vectors computed with the C
  library (libxxhash, XXH64(data, len, seed)), the three well-known ones and
  inputs of 4..255 bytes around the 8/32-byte block boundaries; and against
  the xxhash module (python3-xxhash) on random inputs when it is installed.
  keel.partition_of is XXH64 % partitions, whichever is used.
- The routing table: Routes.parse of a CLUSTER.ROUTES reply (and refusal of
  malformed ones), lookup / primary (unknown space, no live replica, a
  primary not ONLINE), the MOVED text.
- Scripted fakes (RESP servers in this process, each daemon with its own
  map and a per-connection CLIENT.REDIRECT flag, serving the keys it leads,
  answering MOVED on a redirect connection otherwise, and forwarding
  (serving) on a plain one): single-key commands go straight to the primary
  with CLIENT.REDIRECT ON; a stale table is refreshed after MOVED (from the
  daemon when its map is newer, else from the coordinator) and the call
  succeeds; daemons whose maps disagree cannot bounce a call more than twice
  (then it is forwarded); writes keep one SEQ pair over every attempt; a
  coordinator without CLUSTER.ROUTES leaves the client forwarding (asked
  once); a dead primary is avoided; retry_timeout=0 does not route.

Every wait is bounded.
"""

import json
import os
import random
import socket
import threading
import time

import pytest

import keel
from keel import _xxh64
from keel import Routes, partition_of
from conftest import HOST, NeedMore, parse_reply

# ============================================================================
# XXH64
# ============================================================================

# XXH64(data, len, 0) from libxxhash 0.8.1 (a tiny cc program), where data is
# bytes((i * 7 + 3) & 255 for i in range(n)).
GEN = bytes((i * 7 + 3) & 255 for i in range(256))
C_VECTORS = [
    (b"", 0xEF46DB3751D8E999),
    (b"a", 0xD24EC4F1A98C6E5B),
    (b"abc", 0x44BC2CF5AD770999),
    (GEN[:4], 0x9BB64B7D66EE9FDA),
    (GEN[:7], 0x9A7B149959CE60D8),
    (GEN[:8], 0xDAB99D95C6F90092),
    (GEN[:12], 0xD52E407833AF5133),
    (GEN[:31], 0xA2AA5F33CC4A6119),
    (GEN[:32], 0x23C3C17EF790FD97),
    (GEN[:33], 0x50A7CFC7BA588784),
    (GEN[:63], 0x5E3E54B431C7493C),
    (GEN[:64], 0x0EB64B3EF6EEB01F),
    (GEN[:100], 0xA61F8D4C170FE531),
    (GEN[:255], 0x39AE55A29989206F),
]
C_SEEDED = (GEN[:100], 12345, 0xACB8A02891FEA7D2)


@pytest.mark.parametrize("data,expected", C_VECTORS, ids=[str(len(d)) for d, _ in C_VECTORS])
def test_pure_xxh64_matches_the_c_library(data, expected):
    assert _xxh64.xxh64(data) == expected
    assert _xxh64.xxh64(bytearray(data), 0) == expected
    assert keel._hash64(data) == expected   # whichever implementation the client uses


def test_pure_xxh64_with_a_seed():
    data, seed, expected = C_SEEDED
    assert _xxh64.xxh64(data, seed) == expected


def test_pure_xxh64_matches_the_xxhash_module():
    xxhash = pytest.importorskip("xxhash")
    rng = random.Random(7)
    for n in list(range(0, 80)) + [127, 128, 129, 255, 256, 1000, 4099]:
        data = bytes(rng.randrange(256) for _ in range(n))
        for seed in (0, 1, rng.randrange(1 << 64), (1 << 64) - 1):
            assert _xxh64.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed=seed), (n, seed)


def test_partition_of_is_xxh64_mod_partitions():
    for key in ["jsmith1", "", "ключ", b"\xff\x00raw", "k" * 300]:
        b = key.encode("utf-8") if isinstance(key, str) else key
        for n in (1, 3, 8, 1000):
            assert partition_of(key, n) == _xxh64.xxh64(b) % n
    # str keys are their UTF-8 bytes (lone surrogates: the original bytes)
    assert partition_of(b"\xff".decode("utf-8", "surrogateescape"), 97) == partition_of(b"\xff", 97)


# ============================================================================
# The routing table
# ============================================================================

def routes_reply(version, daemons, spaces):
    """A CLUSTER.ROUTES reply as keel._resp.Connection returns it. daemons:
    [(id, host, port, state)]; spaces: [(name, [primary ids])]."""
    return [version,
            [[i, h.encode(), p, s.encode()] for i, h, p, s in daemons],
            [[n.encode(), len(prim), list(prim)] for n, prim in spaces]]


SAMPLE = routes_reply(12, [(1, "127.0.0.5", 2012, "ONLINE"), (2, "127.0.0.6", 2013, "ONLINE"),
                           (3, "127.0.0.7", 2014, "OFFLINE")],
                      [("kv", [1, 2, 3, 0, 2, 1, 1, 2]), ("one", [2])])


def test_routes_parse_and_lookup():
    t = Routes.parse(SAMPLE)
    assert t.version == 12
    assert t.daemons == {1: (("127.0.0.5", 2012), "ONLINE"), 2: (("127.0.0.6", 2013), "ONLINE"),
                         3: (("127.0.0.7", 2014), "OFFLINE")}
    assert t.spaces == {b"kv": [1, 2, 3, 0, 2, 1, 1, 2], b"one": [2]}
    seen = set()
    for i in range(200):
        key = "key%d" % i
        part = partition_of(key, 8)
        did = SAMPLE[2][0][2][part]
        hit = t.lookup("kv", key)
        assert hit[:2] == (part, did)
        seen.add(did)
        if did in (1, 2):
            assert hit[2:] == t.daemons[did]
            assert t.primary("kv", key) == t.daemons[did][0]
            assert t.primary(b"kv", key.encode()) == t.daemons[did][0]
        elif did == 3:
            assert hit[3] == "OFFLINE" and t.primary("kv", key) is None   # not ONLINE
        else:
            assert hit[2:] == (None, None) and t.primary("kv", key) is None  # no live replica
    assert seen == {0, 1, 2, 3}
    assert t.primary("one", "anything") == ("127.0.0.6", 2013)
    assert t.lookup("nospace", "k") is None and t.primary("nospace", "k") is None
    # A primary id the daemon list does not name.
    t2 = Routes.parse(routes_reply(1, [], [("kv", [9])]))
    assert t2.lookup("kv", "k") == (0, 9, None, None) and t2.primary("kv", "k") is None


@pytest.mark.parametrize("bad", [
    None, b"x", [], [1, [], []][:2], ["1", [], []], [-1, [], []], [1, b"", []],
    [1, [[1, b"h", 2012]], []],                       # a daemon with 3 fields
    [1, [[0, b"h", 2012, b"ONLINE"]], []],            # daemon id 0
    [1, [[1, b"", 2012, b"ONLINE"]], []],             # no host
    [1, [[1, b"h", 70000, b"ONLINE"]], []],           # bad port
    [1, [[1, b"h", 2012, 5]], []],                    # state not a string
    [1, [], [[b"kv", 2, [1]]]],                       # 2 partitions, 1 entry
    [1, [], [[b"kv", 0, []]]],                        # no partitions
    [1, [], [[b"kv", 1, [-1]]]],                      # negative id
    [1, [], [[b"kv", 1, [b"1"]]]],                    # id not an integer
    [1, [], [[b"kv", 1]]],
    [True, [], []],
], ids=lambda b: repr(b)[:40])
def test_routes_parse_refuses_malformed_replies(bad):
    with pytest.raises(ValueError):
        Routes.parse(bad)


def test_moved_text():
    assert keel._parse_moved("3 127.0.0.6:2013 42") == (3, ("127.0.0.6", 2013), 42)
    assert keel._parse_moved("3 [::1]:2013 42") == (3, ("::1", 2013), 42)
    for bad in ("", "3 127.0.0.6:2013", "x 127.0.0.6:2013 4", "3 nowhere 4", "3 h:1 v",
                "3 h:1 4 extra"):
        assert keel._parse_moved(bad) is None, bad


# ============================================================================
# Scripted fakes
# ============================================================================

DESC = ("space kv\nkey k\nattributes string v, int n\ncreate 8 partitions\n"
        "tolerate 1 failures\n")


def enc(v):
    if isinstance(v, Error):
        return b"-" + v.encode() + b"\r\n"
    if isinstance(v, Simple):
        return b"+" + v.encode() + b"\r\n"
    if v is None:
        return b"$-1\r\n"
    if isinstance(v, int):
        return b":%d\r\n" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"$%d\r\n%s\r\n" % (len(v), v)
    return b"*%d\r\n" % len(v) + b"".join(enc(x) for x in v)


class Error(str):
    pass


class Simple(str):
    pass


OK = Simple("OK")


class Server:
    """A RESP server on a free port of HOST: handle(conn_state, args) (args:
    list of bytes; conn_state: a dict per connection) returns a reply value
    for enc(). Every request is recorded with a copy of its connection's
    state."""

    def __init__(self, handle):
        self.handle = handle
        self.log = []          # (args as str, dict(conn_state)) per request
        self.lock = threading.Lock()
        self.stopped = False
        self.conns = []
        self.ls = socket.socket()
        self.ls.bind((HOST, 0))
        self.ls.listen(16)
        self.ls.settimeout(0.05)
        self.addr = (HOST, self.ls.getsockname()[1])
        self.text = "%s:%d" % self.addr
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped:
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        buf = b""
        state = {}
        try:
            while True:
                try:
                    args, end = parse_reply(buf, 0)
                except NeedMore:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                buf = buf[end:]
                with self.lock:
                    self.log.append(([a.decode("utf-8", "replace") for a in args], dict(state)))
                s.sendall(enc(self.handle(state, args)))
        except OSError:
            return
        finally:
            s.close()

    def requests(self, name=None):
        """(args, conn_state) of every request (or of those whose command,
        unwrapped from SEQ, is name)."""
        with self.lock:
            out = list(self.log)
        if name is None:
            return out
        return [(a, st) for a, st in out if unseq(a)[0].upper() == name]

    def stop(self):
        self.stopped = True
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.ls.close()
        self.thread.join(timeout=5)


def unseq(args):
    return args[3:] if args and args[0].upper() == "SEQ" and len(args) > 3 else args


class Map:
    def __init__(self, version, primaries):
        self.version = version
        self.primaries = list(primaries)   # daemon index per partition, or None


class Fakes:
    """One fake coordinator and N fake daemons sharing one store. The
    coordinator's map is self.coord_map; daemon i's is self.maps[i]. Daemon
    ids in the routes are index + 1."""

    def __init__(self, ndaemons=3, partitions=8, routes=True):
        self.partitions = partitions
        self.store = {}
        self.routes_supported = routes
        self.daemons = [Server(self._daemon(i)) for i in range(ndaemons)]
        prim = [p % ndaemons for p in range(partitions)]
        self.coord_map = Map(5, prim)
        self.maps = [Map(5, prim) for _ in range(ndaemons)]
        self.coord = Server(self._coord)

    def routes(self, m):
        return [m.version,
                [[i + 1, HOST, d.addr[1], "ONLINE"] for i, d in enumerate(self.daemons)],
                [["kv", self.partitions, [0 if p is None else p + 1 for p in m.primaries]]]]

    def _coord(self, state, args):
        cmd = args[0].decode().upper()
        if cmd == "INFO":
            return b"# Server\r\nmode:coordinator\r\n"
        if cmd == "CLUSTER.STATUS":
            return json.dumps({
                "coordinators": [{"id": 1, "address": self.coord.text, "role": "leader"}],
                "daemons": [{"id": i + 1, "address": d.text, "state": "ONLINE"}
                            for i, d in enumerate(self.daemons)]})
        if cmd == "CLUSTER.ROUTES" and self.routes_supported:
            return self.routes(self.coord_map)
        if cmd == "SPACE.DESCRIBE":
            return DESC
        return Error("ERR unknown command '%s'" % cmd)

    def _daemon(self, i):
        def handle(state, args):
            cmd = args[0].decode().upper()
            if cmd == "INFO":
                return ("# Server\r\nmode:daemon\r\n\r\n# Lease\r\ncoordinator:%s\r\n"
                        "coordinators:%s\r\n" % (self.coord.text, self.coord.text))
            if cmd == "CLUSTER.ROUTES":
                return self.routes(self.maps[i])
            if cmd == "CLIENT.REDIRECT":
                state["redirect"] = args[1].decode().upper() == "ON"
                return OK
            body = args[3:] if cmd == "SEQ" else args
            m = self.maps[i]
            part = partition_of(body[2], self.partitions)
            owner = m.primaries[part]
            if owner != i and state.get("redirect"):
                return Error("MOVED %d %s %d" % (part, self.daemons[owner].text, m.version))
            return self.apply(body)
        return handle

    def apply(self, body):
        cmd = body[0].decode().upper()
        key = body[2]
        if cmd == "PUT":
            obj = self.store.setdefault(key, {"v": b"", "n": 0})
            for j in range(3, len(body) - 1, 2):
                name = body[j].decode()
                obj[name] = int(body[j + 1]) if name == "n" else body[j + 1]
            return OK
        if cmd == "GET":
            obj = self.store.get(key)
            return None if obj is None else ["v", obj["v"], "n", obj["n"]]
        if cmd == "DEL":
            return 1 if self.store.pop(key, None) is not None else 0
        if cmd == "ADD":
            obj = self.store[key]
            obj["n"] += int(body[4])
            return obj["n"]
        return Error("ERR unknown command")

    def owner(self, key, m=None):
        return (m or self.coord_map).primaries[partition_of(key, self.partitions)]

    def stop(self):
        for s in self.daemons + [self.coord]:
            s.stop()


@pytest.fixture
def fakes():
    made = []

    def make(**kw):
        f = Fakes(**kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


KEYS = ["key-%d" % i for i in range(40)]


def data_requests(f, i):
    """Daemon i's data requests: (command, key, redirect?)."""
    out = []
    for args, st in f.daemons[i].requests():
        b = unseq(args)
        if b[0].upper() in ("PUT", "GET", "DEL", "ADD", "CPUT"):
            out.append((b[0].upper(), b[2], bool(st.get("redirect"))))
    return out


@pytest.mark.parametrize("entry", ["coordinator", "daemon"])
def test_fake_single_key_commands_go_to_their_primary(fakes, entry):
    f = fakes()
    addr = f.coord.addr if entry == "coordinator" else f.daemons[2].addr
    with keel.Client(*addr) as c:
        for i, k in enumerate(KEYS):
            assert c.put("kv", k, {"v": "x%d" % i, "n": i}) is True
            assert c.get("kv", k) == {"v": "x%d" % i, "n": i}
            assert c.atomic_add("kv", k, {"n": 1}) == {"n": i + 1}
        assert c.delete("kv", KEYS[0]) is True
        st = c.stats
        assert st["direct"] == 3 * len(KEYS) + 1
        assert st["moved"] == 0 and st["forwarded"] == 0 and st["fallbacks"] == 0
        assert st["route_fetches"] == 1 and st["routes_version"] == 5
        assert c.routes.version == 5
    # Every data request reached its key's primary, on a redirect connection.
    for i in range(3):
        reqs = data_requests(f, i)
        assert reqs, "daemon %d got nothing" % i
        for cmd, k, redirect in reqs:
            assert redirect and f.owner(k) == i, (i, cmd, k)
    # The table came from the coordinator, once.
    assert len(f.coord.requests("CLUSTER.ROUTES")) == 1
    assert all(not d.requests("CLUSTER.ROUTES") for d in f.daemons)


def test_fake_stale_table_follows_moved_from_a_newer_daemon(fakes):
    f = fakes()
    with keel.Client(*f.coord.addr) as c:
        for k in KEYS:
            c.put("kv", k, {"n": 1})
        # Every partition moves to the next daemon; the daemons learn it
        # (version 6), the client's table is at 5. The coordinator is not
        # asked: the daemon that answers MOVED has the newer map.
        new = Map(6, [(p + 1) % 3 for p in f.coord_map.primaries])
        f.coord_map = new
        f.maps = [new] * 3
        k = KEYS[1]
        old_owner = f.owner(k, Map(5, [p % 3 for p in range(8)]))
        before = len(f.coord.requests("CLUSTER.ROUTES"))
        assert c.atomic_add("kv", k, {"n": 5}) == {"n": 6}
        st = c.stats
        assert st["moved"] == 1 and st["routes_version"] == 6 and st["fallbacks"] == 0
        assert len(f.daemons[old_owner].requests("CLUSTER.ROUTES")) == 1
        assert len(f.coord.requests("CLUSTER.ROUTES")) == before
        # Both attempts carried the same SEQ pair; the second went to the new
        # primary.
        seqs = [(a[1], a[2], i) for i, d in enumerate(f.daemons) for a, _ in d.requests("ADD")]
        assert sorted(seqs, key=lambda x: x[2] != old_owner) == [
            (str(c.client_id), str(c._client_seq), old_owner),
            (str(c.client_id), str(c._client_seq), f.owner(k))]
        # From now on: straight to the new primaries, no MOVED.
        for k in KEYS:
            assert c.get("kv", k)["n"] == (6 if k == KEYS[1] else 1)
        assert c.stats["moved"] == 1


def test_fake_daemon_behind_the_table_refreshes_from_the_coordinator(fakes):
    """The coordinator moved a partition (version 6) and the client knows,
    but the new primary's map is still at 5: it answers MOVED naming the old
    primary with version 5 <= 6, so the client asks the coordinator again;
    the old primary (also at 5) would serve, so after two MOVED replies the
    call is forwarded instead of bouncing."""
    f = fakes()
    k = KEYS[3]
    with keel.Client(*f.coord.addr) as c:
        c.put("kv", k, {"n": 1})
        part = partition_of(k, 8)
        old = f.coord_map.primaries[part]
        newp = (old + 1) % 3
        prim = list(f.coord_map.primaries)
        prim[part] = newp
        f.coord_map = Map(6, prim)
        # The old primary already has the new map (it handed over): it says
        # MOVED to newp. newp's map is behind: it says MOVED to old.
        f.maps[old] = Map(6, prim)
        before = len(f.coord.requests("CLUSTER.ROUTES"))
        c._routes = None          # make the client learn version 6
        assert c.get("kv", k) == {"v": "", "n": 1}
        st = c.stats
        assert st["moved"] == 2 and st["fallbacks"] == 1
        assert len(f.coord.requests("CLUSTER.ROUTES")) >= before + 2
        # newp (MOVED, redirect), old (MOVED, redirect), then a plain
        # connection somewhere (forwarded).
        gets = [(i, r) for i in range(3) for (cmd, key, r) in data_requests(f, i)
                if cmd == "GET"]
        assert (newp, True) in gets and (old, True) in gets
        assert sum(1 for _, r in gets if not r) == 1 and len(gets) == 3


def test_fake_writes_keep_their_seq_pair_over_moved_and_fallback(fakes):
    f = fakes()
    k = KEYS[4]
    with keel.Client(*f.coord.addr) as c:
        c.put("kv", k, {"n": 10})
        part = partition_of(k, 8)
        # Every daemon names the next one: MOVED, MOVED, then forwarded.
        for i in range(3):
            prim = list(f.maps[i].primaries)
            prim[part] = (i + 1) % 3
            f.maps[i] = Map(5, prim)
        assert c.atomic_add("kv", k, {"n": 1}) == {"n": 11}
        adds = [(a[1], a[2], st.get("redirect", False)) for d in f.daemons
                for a, st in d.requests("ADD")]
        assert len(adds) == 3
        assert {(x, y) for x, y, _ in adds} == {(str(c.client_id), str(c._client_seq))}
        assert sorted(r for _, _, r in adds) == [False, True, True]
        assert c.stats["fallbacks"] == 1


def test_fake_without_cluster_routes_the_daemons_forward(fakes):
    f = fakes(routes=False)
    with keel.Client(*f.coord.addr) as c:
        for k in KEYS[:10]:
            c.put("kv", k, {"n": 2})
            assert c.get("kv", k)["n"] == 2
        st = c.stats
        assert st["direct"] == 0 and st["forwarded"] == 20 and st["route_fetch_failures"] == 1
        assert c.routes is None
    assert len(f.coord.requests("CLUSTER.ROUTES")) == 1     # not asked on every call
    for d in f.daemons:
        assert not d.requests("CLIENT.REDIRECT")
        assert all(not st for _, st in d.requests())


def test_fake_dead_primary_is_avoided(fakes):
    f = fakes()
    with keel.Client(*f.coord.addr, retry_timeout=5) as c:
        for k in KEYS:
            c.put("kv", k, {"n": 3})
        f.daemons[0].stop()
        on_dead = [k for k in KEYS if f.owner(k) == 0]
        on_live = [k for k in KEYS if f.owner(k) != 0]
        assert on_dead and on_live
        t0 = time.monotonic()
        # The fake daemons forward by serving from the shared store: keys on
        # the dead daemon are served by the others once it is avoided.
        for k in on_dead + on_live:
            assert c.get("kv", k)["n"] == 3
        assert time.monotonic() - t0 < 2
        assert c.stats["forwarded"] >= len(on_dead)


def test_fake_retry_timeout_zero_does_not_route(fakes):
    f = fakes()
    with keel.Client(*f.coord.addr, retry_timeout=0) as c:
        c.put("kv", "a", {"n": 1})
        assert c.get("kv", "a")["n"] == 1
        assert c.stats["direct"] == 0 and c.routes is None
    assert not f.coord.requests("CLUSTER.ROUTES")


def test_fake_space_missing_from_the_table_is_not_refetched_on_every_call(fakes):
    f = fakes()
    with keel.Client(*f.coord.addr) as c:
        c.put("kv", "a", {"n": 1})
        n0 = len(f.coord.requests("CLUSTER.ROUTES"))
        # "other" is not in the table: forwarded (the fake serves it).
        for _ in range(5):
            c.put("other", "a", {"n": 1})
        assert len(f.coord.requests("CLUSTER.ROUTES")) <= n0 + 1
        assert c.stats["forwarded"] == 5
