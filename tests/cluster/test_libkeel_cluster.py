"""libkeel's cluster mode with real processes (docs/libkeel.md).

The C side is tests/cluster/keel_cluster_probe.c (built by `make cluster`
into $(BUILD)/tests/, next to the keel binary's build directory), linked
against libkeel.a; each test runs it against a real cluster (3 coordinators,
real daemons, fast failure detection, as test_replication.py sets up) and
checks what it printed against the cluster itself:

- routing: connected through a coordinator or a daemon, every PUT and GET is
  answered by the key's primary (checked independently with FWD GET, which
  only the primary answers) and no -MOVED was needed;
- kill -9 of a primary under a PUT loop and an ADD loop: no call fails,
  every acknowledged PUT is readable, and the counter equals the number of
  acknowledged ADDs (each applied once);
- -UNAVAILABLE is returned at once, not retried for the whole budget;
- administration through a daemon's address reaches the coordinators.
"""

import os
import subprocess
import threading
import time

import harness
import test_replication as tr
from harness import wait_for

PROBE = os.path.join(os.path.dirname(os.path.abspath(harness.KEEL_BIN)), "tests",
                     "keel_cluster_probe")


def probe(*args, timeout=30, env=None):
    """Runs the probe to completion; returns its stdout lines."""
    assert os.path.exists(PROBE), "build the probe first: make cluster (missing %s)" % PROBE
    p = subprocess.run([PROBE] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, **(env or {})))
    assert p.returncode == 0, "probe %r exited %d:\n%s%s" % (args, p.returncode, p.stdout,
                                                             p.stderr)
    return p.stdout.splitlines()


def stats(lines):
    last = lines[-1].split()
    assert last[0] == "stats", lines[-5:]
    return {k: int(v) for k, v in (w.split("=") for w in last[1:])}


def _is_primary(d, key):
    """FWD GET is never forwarded again: only the primary answers it with the
    object."""
    return isinstance(d.try_call("FWD", "GET", "kv", key), list)


def test_routes_straight_to_primaries(cluster):
    cl, ds = tr._setup(cluster)
    tr._wait_serving(ds)
    by_addr = {d.addr: d for d in ds}
    for seed, want_mode, prefix in ((cl.coordinators[0], 2, "c"), (ds[1], 3, "d")):
        mode = probe("mode", seed.host, seed.port)
        assert mode[0].split()[:2] == ["mode", str(want_mode)], mode
        assert int(mode[0].split()[3]) > 0  # a client id was drawn
        out = probe("route", seed.host, seed.port, "kv", prefix, 40)
        rows = [l.split() for l in out if l.startswith("key ")]
        assert len(rows) == 40, out
        used = set()
        for _, key, _, put_addr, _, get_addr, same in rows:
            assert same == "same", out
            assert put_addr == get_addr, (key, put_addr, get_addr)
            assert put_addr in by_addr, (put_addr, list(by_addr))
            assert _is_primary(by_addr[put_addr], key), (key, put_addr)
            used.add(put_addr)
        assert len(used) == 3  # 8 partitions spread over 3 daemons
        st = stats(out)
        # The table came with the connect: no -MOVED, no retry, one attempt
        # per call, one connection per daemon (plus discovery's).
        assert st["moved"] == 0 and st["retries"] == 0, st
        assert st["attempts"] == 80, st
        assert st["refreshes"] >= 1 and st["version"] > 0, st
    out = probe("search", cl.coordinators[1].host, cl.coordinators[1].port, "kv")
    assert out[0] == "count 80 found 80", out
    out = probe("pipe", cl.coordinators[2].host, cl.coordinators[2].port, "kv", "c", 40)
    assert out[0] == "piped 40", out


def test_admin_through_a_daemon_address(cluster):
    cl, ds = tr._setup(cluster)
    tr._wait_serving(ds)
    out = probe("admin", ds[0].host, ds[0].port, "fresh")
    assert "ack space_add" in out, out
    assert any(l.startswith("spaces ") and "fresh" in l.split() for l in out), out
    # The daemons may not know the space yet: NOSPACE is retried after the
    # coordinators confirm it exists.
    assert "ack put" in out, out


def test_kill9_primary_under_writes(cluster, measure):
    cl, ds = tr._setup(cluster)
    tr._wait_serving(ds)
    assert tr._call_retry(ds, "PUT", "kv", "ctr", "n", "0") == "OK"
    victim = wait_for(lambda: next((d for d in ds if _is_primary(d, "ctr")), None), 10,
                      "the primary of ctr")
    seed = cl.coordinators[0]
    results = {}

    def run(name, *args):
        results[name] = probe(*args, timeout=40)

    threads = [threading.Thread(target=run, args=("puts", "puts", seed.host, seed.port, "kv",
                                                  "w", 7)),
               threading.Thread(target=run, args=("adds", "adds", seed.host, seed.port, "kv",
                                                  "ctr", 7))]
    for t in threads:
        t.start()
    time.sleep(1.5)
    victim.kill9()
    t0 = time.monotonic()
    for t in threads:
        t.join(45)
    assert set(results) == {"puts", "adds"}, results.keys()
    measure("libkeel: kill -9 of a primary 1.5 s into 7 s loops; loops ended after the kill",
            "%.1f s" % (time.monotonic() - t0))
    for name, out in results.items():
        errs = [l for l in out if l.startswith("err ")]
        assert not errs, "%s: %r" % (name, errs[:5])
    live = [d for d in ds if d is not victim]
    acked = [l.split()[1] for l in results["puts"] if l.startswith("ack ")]
    assert len(acked) > 20, results["puts"][-3:]
    for key in acked:
        r = tr._call_retry(live, "GET", "kv", key)
        assert isinstance(r, list) and r[1] == ("value-%s" % key[1:]).encode(), (key, r)
    sums = [int(l.split()[1]) for l in results["adds"] if l.startswith("ack ")]
    # Each acknowledged ADD applied exactly once: the answers are 1, 2, ...
    assert sums == list(range(1, len(sums) + 1)), sums[-10:]
    assert tr._call_retry(live, "GET", "kv", "ctr")[3] == len(sums)
    st_adds, st_puts = stats(results["adds"]), stats(results["puts"])
    assert st_adds["retries"] > 0, st_adds  # the ADD loop's primary died under it
    assert st_puts["refreshes"] >= 2 and st_adds["refreshes"] >= 2


def test_unavailable_is_returned_at_once(cluster):
    cl, ds = tr._setup(cluster, tolerate=0, partitions=6)
    tr._wait_serving(ds)
    seed = cl.coordinators[0]
    out = probe("route", seed.host, seed.port, "kv", "p", 30)
    assert sum(l.startswith("key ") for l in out) == 30, out
    ds[0].kill9()
    leader = cl.wait_leader()
    wait_for(lambda: any(s["health"]["UNAVAILABLE"] > 0 for s in leader.status()["spaces"]), 10,
             "partitions of the dead daemon UNAVAILABLE")
    unavailable = found = 0
    for i in range(30):
        out = probe("get", seed.host, seed.port, "kv", "p%d" % i)
        ms = int(out[-2].split()[1])
        if out[0].startswith("err "):
            assert out[0].split()[2] == "-17", out  # KEEL_ERR_UNAVAILABLE
            assert "UNAVAILABLE partition" in out[0], out
            assert ms < 2000, out  # not retried for the 15 s budget
            unavailable += 1
        else:
            assert out[0] == "ack found", out
            found += 1
    assert unavailable > 0 and found > 0, (unavailable, found)
