"""The Python client's direct routing (clients/python/keel, "Direct routing")
against real coordinators and daemons (the server side is tested in
test_routing.py; the client without servers in tests/e2e/test_python_routing.py).

Every test runs 3 coordinators (20 ms tick) and 3 `keel daemon`s with fast
failure detection (heartbeat 100 ms, ping_timeout 1000 ms; test_replication's
_setup), the space kv with 8 partitions, tolerate 1.

- A Client given a coordinator sends every single-key command straight to
  the key's primary as CLUSTER.ROUTES names it (recorded per attempt), with
  no MOVED once its table is fresh; SEARCH/COUNT still work.
- By hand: CLIENT.REDIRECT ON and a GET on a daemon that does not lead the
  key's partition answer -MOVED naming keel.partition_of(key) and the
  primary CLUSTER.ROUTES gives (so the client's XXH64 places keys as the
  servers do). A Client given a daemon, holding a deliberately wrong table
  (newer or older than the daemons' maps), still answers every call: it
  follows MOVED, refreshes its table and ends on the primaries.
- Failover: a write loop (PUTs of new keys and ADDs on counters) through a
  Client given a coordinator while a daemon that leads partitions is killed
  with SIGKILL; the client sees connection errors / TRYAGAIN / MOVED,
  refreshes its table, goes straight to the new primaries, and every
  acknowledged write is readable afterwards (each counter equals the number
  of ADDs acknowledged: none applied twice).

Each test stays well under 30 s; every wait is bounded.
"""

import os
import sys
import threading
import time

import harness
from harness import RespError, wait_for
from test_replication import _setup, _wait_serving

sys.path.insert(0, os.path.join(harness.REPO, "clients", "python"))

import keel  # noqa: E402

PARTITIONS = 8


def _routes(node):
    """CLUSTER.ROUTES of node (harness call) as a keel.Routes."""
    return keel.Routes.parse(node.call("CLUSTER.ROUTES"))


def _wait_daemon_maps(ds, version):
    """Until every daemon's map is at least version."""
    for d in ds:
        wait_for(lambda d=d: _routes(d).version >= version, 10,
                 "%s's map at version %d" % (d.name, version))


class RecordingClient(keel.Client):
    """Records every attempt: (address, command args, sent direct?, reply
    or error)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.attempts = []
        self._rec_lock = threading.Lock()

    def _attempt(self, addr, args, deadline, first):
        r = super()._attempt(addr, args, deadline, first)
        with self._rec_lock:
            self.attempts.append((tuple(addr), tuple(args), isinstance(addr, keel._Direct), r))
        return r

    def data_attempts(self, since=0):
        """(address, command, key, direct?, reply) of the single-key
        attempts recorded from index since."""
        out = []
        with self._rec_lock:
            attempts = self.attempts[since:]
        for addr, args, direct, r in attempts:
            body = args[3:] if str(args[0]).upper() == "SEQ" else args
            if str(body[0]).upper() in ("GET", "PUT", "DEL", "CPUT", "ADD"):
                out.append((addr, str(body[0]).upper(), body[2], direct, r))
        return out


def test_single_key_commands_go_to_their_primary(cluster):
    cl, ds = _setup(cluster, partitions=PARTITIONS)
    _wait_serving(ds)
    leader = cl.wait_leader()
    table = _routes(leader)
    _wait_daemon_maps(ds, table.version)
    keys = ["route-%d" % i for i in range(60)]
    with RecordingClient(leader.host, leader.port) as c:
        assert c.mode == "coordinator"
        # A first pass learns the table (and the schema).
        for i, k in enumerate(keys):
            assert c.put("kv", k, {"v": "a%d" % i, "n": i}) is True
        assert c.stats["route_fetches"] >= 1
        # The measured pass: every request straight to the primary.
        before, since = c.stats, len(c.attempts)
        for i, k in enumerate(keys):
            assert c.get("kv", k) == {"v": "a%d" % i, "n": i}
            assert c.atomic_add("kv", k, {"n": 1}) == {"n": i + 1}
        c.put("kv", keys[0], {"v": "b"})
        assert c.delete("kv", keys[1]) is True
        assert c.cond_put("kv", keys[2], {"v": "a2"}, {"v": "c"}) is True
        after = c.stats
        nops = 2 * len(keys) + 3
        assert after["direct"] - before["direct"] == nops, (before, after)
        assert after["moved"] == before["moved"] == 0, after
        assert after["forwarded"] == before["forwarded"] and after["fallbacks"] == 0
        table = _routes(cl.wait_leader())
        assert c.routes.version <= table.version
        assert c.routes.spaces == table.spaces      # no primary moved meanwhile
        sent = c.data_attempts(since)
        assert len(sent) == nops
        for addr, cmd, key, direct, r in sent:
            assert direct and not isinstance(r, keel.KeelError), (addr, cmd, key, r)
            assert addr == table.primary("kv", key), (cmd, key, addr)
        # Keys are spread: every daemon leads some of them.
        assert {a for a, *_ in sent} == {(d.host, d.port) for d in ds}
        # SEARCH and COUNT go to a daemon as before (not routed).
        assert c.count("kv") == len(keys) - 1
        assert [o["k"] for o in c.search("kv", {"v": "c"})] == [keys[2]]
        print("stats: %s" % c.stats)


def test_moved_names_the_primary_and_a_wrong_table_is_corrected(cluster):
    cl, ds = _setup(cluster, partitions=PARTITIONS)
    _wait_serving(ds)
    leader = cl.wait_leader()
    table = _routes(leader)
    _wait_daemon_maps(ds, table.version)
    by_addr = {(d.host, d.port): d for d in ds}
    # By hand: the MOVED text agrees with CLUSTER.ROUTES and partition_of.
    for i in range(16):
        key = "hand-%d" % i
        part = keel.partition_of(key, PARTITIONS)
        primary = table.primary("kv", key)
        assert primary in by_addr
        for d in ds:
            with d.conn() as conn:
                assert conn.cmd("CLIENT.REDIRECT", "ON") == "OK"
                try:
                    r = conn.cmd("GET", "kv", key)
                except RespError as e:
                    r = e
            if (d.host, d.port) == primary:
                assert r is None, (d, key, r)     # the primary serves it (absent)
            else:
                assert isinstance(r, RespError) and r.code == "MOVED", (d, key, r)
                words = r.text.split()
                assert int(words[1]) == part, (key, r.text)
                assert words[2] == "%s:%d" % primary, (key, r.text)
                assert int(words[3]) >= table.version

    # A Client given a daemon, with a wrong table: each partition's primary
    # shifted to the next daemon. Older than the daemons' maps: MOVED with a
    # newer version, refreshed from the daemon. Same version: refreshed from
    # the coordinators. Either way every call answers.
    ids = sorted(table.daemons)
    shifted = {b"kv": [ids[(ids.index(p) + 1) % len(ids)] for p in table.spaces[b"kv"]]}
    keys = ["wrong-%d" % i for i in range(24)]
    entry = ds[1]
    for label, version in (("older", table.version - 1), ("same", table.version)):
        with RecordingClient(entry.host, entry.port) as c:
            assert c.mode == "daemon"
            assert c.put("kv", "warm-" + label, {"v": label}) is True   # learns the table
            c._routes = keel.Routes(version, dict(table.daemons), shifted)
            since = len(c.attempts)
            for i, k in enumerate(keys):
                assert c.put("kv", k, {"v": label, "n": i}) is True
            for i, k in enumerate(keys):
                assert c.get("kv", k) == {"v": label, "n": i}
            st = c.stats
            assert st["moved"] >= 1, st                 # the first call was misrouted
            assert st["routes_version"] >= table.version
            fresh = _routes(cl.wait_leader())
            # Once corrected, the rest went straight to the primaries.
            tail = c.data_attempts(since)[-len(keys):]
            for addr, cmd, key, direct, r in tail:
                assert direct and addr == fresh.primary("kv", key), (label, cmd, key, addr, r)
            moved = [r for *_, r in c.data_attempts(since)
                     if isinstance(r, keel.KeelError) and r.code == "MOVED"]
            assert len(moved) == st["moved"] and st["moved"] <= 2, (label, moved)
            if label == "older":
                # The daemon that answered MOVED had the newer map and was
                # asked for its table.
                assert any(a[1][0] == "CLUSTER.ROUTES" and a[0] in by_addr for a in c.attempts)
            print("%s table: stats %s" % (label, st))


def test_failover_write_loop_loses_nothing(cluster, measure):
    cl, ds = _setup(cluster, partitions=PARTITIONS)
    _wait_serving(ds)
    leader = cl.wait_leader()
    table = _routes(leader)
    _wait_daemon_maps(ds, table.version)
    led = {d: [p for p, pid in enumerate(table.spaces[b"kv"])
               if table.daemons[pid][0] == (d.host, d.port)] for d in ds}
    victim = max(ds, key=lambda d: len(led[d]))
    assert led[victim], led
    # Counters on partitions the victim leads, so their ADDs fail over.
    counters = []
    i = 0
    while len(counters) < 3:
        k = "ctr-%d" % i
        if keel.partition_of(k, PARTITIONS) in led[victim]:
            counters.append(k)
        i += 1

    c = RecordingClient(leader.host, leader.port, retry_timeout=15)
    for k in counters:
        assert c.put("kv", k, {"n": 0}) is True
    acked, totals = {}, {k: 0 for k in counters}
    state = {"error": None, "n": 0}
    stop = threading.Event()

    def writer():
        try:
            while not stop.is_set():
                n = state["n"]
                k, v = "w-%d" % n, "value-%d" % n
                assert c.put("kv", k, {"v": v}) is True
                acked[k] = v
                ck = counters[n % len(counters)]
                got = c.atomic_add("kv", ck, {"n": 1})
                totals[ck] += 1
                assert got == {"n": totals[ck]}, (ck, got, totals[ck])
                state["n"] = n + 1
        except BaseException as e:  # reported by the main thread
            state["error"] = e

    t = threading.Thread(target=writer, daemon=True)
    try:
        t.start()
        wait_for(lambda: state["n"] >= 30 or state["error"] or not t.is_alive(), 10,
                 "30 writes before the kill")
        assert state["error"] is None, state["error"]
        before = c.stats
        since = len(c.attempts)
        t0 = time.monotonic()
        victim.kill9()
        n_kill = state["n"]
        # Until the writer got well past the kill and the client routes by a
        # table without the victim as a primary.
        vaddr = (victim.host, victim.port)

        def recovered():
            if state["error"] is not None or not t.is_alive():
                return True
            r = c.routes
            return (state["n"] >= n_kill + 60 and r is not None
                    and all(r.daemons.get(pid, (None,))[0] != vaddr
                            for pid in r.spaces[b"kv"]))
        wait_for(recovered, 20, "writes after the failover")
        measure("kill -9 of a primary -> client writing to the new primaries",
                "%d ms" % ((time.monotonic() - t0) * 1000))
        stop.set()
        t.join(timeout=20)
        assert not t.is_alive()
        assert state["error"] is None, state["error"]
        after = c.stats
        failed = [(cmd, str(r)[:80]) for addr, cmd, key, direct, r in c.data_attempts(since)
                  if isinstance(r, keel.KeelError)]
        print("stats before %s after %s; failed attempts after the kill: %s"
              % (before, after, failed))
        # The client did notice: errors or MOVED, then a new table.
        assert failed, "no attempt failed after the kill"
        assert all(r.split()[0] in ("CONNECTION", "TRYAGAIN", "MOVED", "NOQUORUM")
                   for _, r in failed), failed
        assert after["route_fetches"] > before["route_fetches"]
        assert after["routes_version"] > before["routes_version"]
        # Every acknowledged write is there (read through the same client
        # and through a new one), and every ADD applied once.
        with keel.Client(leader.host, leader.port) as fresh:
            for reader in (c, fresh):
                lost = [(k, v) for k, v in acked.items()
                        if (reader.get("kv", k) or {}).get("v") != v]
                assert not lost, "acknowledged writes lost: %r" % lost[:10]
                for k in counters:
                    assert reader.get("kv", k)["n"] == totals[k], k
        # The last reads went straight to live primaries.
        since = len(c.attempts)
        for k in list(acked)[-20:]:
            c.get("kv", k)
        tail = c.data_attempts(since)
        assert tail and all(direct and addr != vaddr for addr, _, _, direct, _ in tail), tail
    finally:
        stop.set()
        t.join(timeout=20)
        c.close()
