"""Routing for smart clients (issue 4 item 2, DESIGN section 3), server side:
CLUSTER.ROUTES on coordinators and daemons, and CLIENT.REDIRECT ON, which
makes a daemon answer -MOVED naming the primary instead of forwarding.

The clients that use them are tested in test_python_routing.py and
test_libkeel_cluster.py.
"""

import time

from harness import RespError, wait_for
from test_replication import _call_retry, _setup, _wait_serving


def _routes(node, *extra):
    version, daemons, spaces = node.call("CLUSTER.ROUTES", *extra)
    ds = {d[0]: (d[1].decode(), d[2], d[3].decode()) for d in daemons}
    sp = {s[0].decode(): (s[1], list(s[2])) for s in spaces}
    return version, ds, sp


def _ask_with_redirect(daemon, key):
    """GET key on a connection with CLIENT.REDIRECT ON: the reply or the
    RespError."""
    with daemon.conn() as c:
        assert c.cmd("CLIENT.REDIRECT", "ON") == "OK"
        try:
            return c.cmd("GET", "kv", key)
        except RespError as e:
            return e


def test_routes_name_the_primaries_and_moved_points_at_them(cluster):
    cl, ds = _setup(cluster, partitions=8)
    _wait_serving(ds)
    leader = cl.wait_leader()
    version, daemons, spaces = _routes(leader)
    assert set(spaces) == {"kv"}
    nparts, primaries = spaces["kv"]
    assert nparts == 8 and len(primaries) == 8
    addr_of = {d.addr: d for d in ds}
    for pid in primaries:
        host, port, state = daemons[pid]
        assert state == "ONLINE" and "%s:%d" % (host, port) in addr_of
    # every daemon's own map gives the same table once it has the version
    for d in ds:
        wait_for(lambda d=d: _routes(d)[0] >= version, 10, "daemon map at the leader's version")
        dv, ddaemons, dspaces = _routes(d)
        if dv == version:
            assert dspaces == spaces and ddaemons == daemons

    for i in range(12):
        key = "route%d" % i
        assert _call_retry(ds, "PUT", "kv", key, "v", "x%d" % i) == "OK"
        answers = {d.addr: _ask_with_redirect(d, key) for d in ds}
        served = [a for a, r in answers.items() if not isinstance(r, RespError)]
        assert len(served) == 1, answers          # only the primary serves it
        primary_addr = served[0]
        assert answers[primary_addr][1] == ("x%d" % i).encode()
        for a, r in answers.items():
            if a == primary_addr:
                continue
            words = str(r).split()
            assert words[0] == "MOVED", r
            part, where, mv = int(words[1]), words[2], int(words[3])
            assert where == primary_addr and mv >= version
            host, port, _ = daemons[primaries[part]]
            assert "%s:%d" % (host, port) == primary_addr   # the routes agree


def test_redirect_off_forwards_and_bad_usage_is_an_error(cluster):
    cl, ds = _setup(cluster, partitions=4)
    _wait_serving(ds)
    assert _call_retry(ds, "PUT", "kv", "a", "v", "1") == "OK"
    for d in ds:
        with d.conn() as c:
            assert c.cmd("CLIENT.REDIRECT", "ON") == "OK"
            assert c.cmd("CLIENT.REDIRECT", "OFF") == "OK"
            assert c.cmd("GET", "kv", "a")[1] == b"1"     # forwarded when needed
            for bad in (("CLIENT.REDIRECT",), ("CLIENT.REDIRECT", "MAYBE")):
                try:
                    c.cmd(*bad)
                    raise AssertionError("%r accepted" % (bad,))
                except RespError as e:
                    assert str(e).startswith("ERR usage: CLIENT.REDIRECT"), e
            # SEARCH and COUNT fan out from any daemon, redirect or not
            assert c.cmd("CLIENT.REDIRECT", "ON") == "OK"
            assert c.cmd("COUNT", "kv") == 1


def test_routes_follow_a_failover(cluster):
    cl, ds = _setup(cluster, partitions=8)
    _wait_serving(ds)
    leader = cl.wait_leader()
    version, daemons, spaces = _routes(leader)
    victim = ds[0]
    vid = cl.daemon_id_of(victim)
    led = [p for p, pid in enumerate(spaces["kv"][1]) if pid == vid]
    assert led, "placement spreads primaries: daemon %d leads some partition" % vid
    victim.kill9()
    t0 = time.monotonic()

    def moved():
        v, dd, sp = _routes(cl.wait_leader())
        prim = sp["kv"][1]
        if any(prim[p] in (vid, 0) for p in led):
            return None
        return v, dd, prim
    v2, daemons2, prim2 = wait_for(moved, 20, "new primaries in CLUSTER.ROUTES")
    assert v2 > version and time.monotonic() - t0 < 20
    for p in led:
        assert daemons2[prim2[p]][2] == "ONLINE"
    # a survivor with redirects on names a live primary once its map has
    # caught up; until then its MOVED carries its older map's version, which
    # is how a client knows to refresh from a coordinator instead
    survivor = ds[1]
    for i in range(40):
        r = _ask_with_redirect(survivor, "k%d" % i)
        if isinstance(r, RespError) and str(r).startswith("MOVED"):
            if str(r).split()[2] == victim.addr:
                assert int(str(r).split()[3]) < v2, r
    wait_for(lambda: _routes(survivor)[0] >= v2, 10, "the survivor's map at the new version")
    for i in range(40):
        r = _ask_with_redirect(survivor, "k%d" % i)
        if isinstance(r, RespError) and str(r).startswith("MOVED"):
            assert str(r).split()[2] != victim.addr, r
