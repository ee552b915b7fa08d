"""Smoke tests of the chaos machinery (issue 5): the nftables drops really
drop between two loopback addresses and nothing else, the partition shapes
are what they claim, and one short seeded run passes every checker.

    /usr/bin/python3 -m pytest -q tests/chaos/test_chaos_smoke.py

The network tests are skipped (with the reason) without nft or root; the
seeded run then uses process faults only.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))

import harness  # noqa: E402
import nemesis as nem  # noqa: E402
import runner  # noqa: E402

NO_NFT = nem.nft_unavailable()
needs_nft = pytest.mark.skipif(NO_NFT is not None, reason=str(NO_NFT))


class Echo:
    """A TCP echo server on (host, port), one thread per connection."""

    def __init__(self, host):
        self.host = host
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.halt = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.halt.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        try:
            while True:
                b = c.recv(4096)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.halt.set()
        self.t.join(2)
        self.sock.close()


def connect_from(src, dst, port, timeout=1.0):
    """A connected socket from address src to dst:port, or the exception."""
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(timeout)
    try:
        s.connect((dst, port))
        return s
    except OSError as e:
        s.close()
        return e


def tables():
    return subprocess.run(["nft", "list", "tables"], capture_output=True,
                          timeout=10).stdout.decode()


@needs_nft
def test_nft_partition_drops_only_the_cut_path_and_heal_restores_it():
    a, b, c = (harness.next_address() for _ in range(3))
    srv_a, srv_b = Echo(a), Echo(b)
    net = nem.Net()
    try:
        assert net.table in tables()
        held = connect_from(a, b, srv_b.port)          # established before the cut
        assert isinstance(held, socket.socket), held
        held.sendall(b"x")
        assert held.recv(1) == b"x"

        net.partition([[a], [b]])
        # both directions of the cut path: SYNs vanish, so connect times out
        # (a reset would be ConnectionRefusedError, immediately)
        t = time.monotonic()
        r = connect_from(a, b, srv_b.port, timeout=1.0)
        assert isinstance(r, socket.timeout), r
        assert time.monotonic() - t >= 0.9
        r = connect_from(b, a, srv_a.port, timeout=1.0)
        assert isinstance(r, socket.timeout), r
        # an established connection goes silent, not reset
        held.settimeout(1.0)
        held.sendall(b"y")
        with pytest.raises(socket.timeout):
            held.recv(1)
        # other paths still work: c to both, and the clients' 127.0.0.1
        for dst, port in ((a, srv_a.port), (b, srv_b.port)):
            s = connect_from(c, dst, port)
            assert isinstance(s, socket.socket), (c, dst, s)
            s.close()
        s = socket.create_connection((b, srv_b.port), timeout=1.0)
        s.close()

        net.heal()
        s = connect_from(a, b, srv_b.port)
        assert isinstance(s, socket.socket), s
        s.close()
        # the held connection delivers what was dropped once TCP retransmits
        held.settimeout(8.0)
        assert held.recv(1) == b"y"
        held.close()
    finally:
        net.close()
        srv_a.close()
        srv_b.close()
    assert net.table not in tables()


@needs_nft
def test_nft_refuses_addresses_outside_loopback_nodes():
    with nem.Net() as net:
        for bad in ("127.0.0.1", "10.0.0.1", "::1"):
            with pytest.raises(ValueError):
                net.block([("127.0.0.9", bad)])
        assert not net.blocked


@needs_nft
def test_a_killed_runs_table_is_deleted_by_the_next_run():
    """A run killed with SIGKILL leaves its table; the next Net() removes
    it (the pid in its name is gone)."""
    p = subprocess.Popen([sys.executable, "-c",
                          "import sys, os; sys.path.insert(0, %r); import nemesis; "
                          "n = nemesis.Net(); print(n.table, flush=True); "
                          "os.kill(os.getpid(), 9)" % HERE],
                         stdout=subprocess.PIPE)
    name = p.stdout.readline().decode().strip()
    p.wait(timeout=10)
    assert name and name in tables()
    with nem.Net():
        assert name not in tables()


def test_ring_of_majorities_each_node_sees_a_majority_and_no_two_the_same():
    for n in (5, 6, 7, 8):
        nodes = list(range(n))
        cut = {frozenset(p) for p in nem.ring_pairs(nodes)}
        sees = {i: frozenset(j for j in nodes if frozenset((i, j)) not in cut) for i in nodes}
        for i in nodes:
            assert len(sees[i]) >= n // 2 + 1, (n, i, sees[i])
            assert len(sees[i]) < n, (n, i)
        assert len(set(sees.values())) == n, (n, sees)


def test_shapes_split_every_node_once():
    import random

    class N:
        def __init__(self, i):
            self.name = "n%d" % i
    nodes = [N(i) for i in range(8)]
    rng = random.Random(1)
    comps, _ = nem.shape_halves(rng, nodes)
    assert sorted(len(c) for c in comps) == [4, 4]
    assert set(comps[0]) | set(comps[1]) == set(nodes)
    comps, _ = nem.shape_one(rng, nodes)
    assert sorted(len(c) for c in comps) == [1, 7]
    pairs, what = nem.shape_bridge(rng, nodes)
    touched = {x for p in pairs for x in p}
    assert len(touched) == 7 and len(pairs) == 3 * 4     # the bridge is in no cut pair


def test_short_seeded_run_passes(tmp_path):
    """20 s of the mixed schedule (kill, pause, partitions, leader kill,
    restarts, combinations) against a real cluster: every checker passes."""
    if not os.path.exists(harness.KEEL_BIN):
        pytest.skip("no keel binary at %s" % harness.KEEL_BIN)
    lines = []
    r = runner.run_one(6, 20, str(tmp_path / "seed-6"), schedule="mixed", keep=True,
                       log=lines.append)
    text = "\n".join(lines)
    assert r["faults"], text
    assert r["ops"]["ok"] > 100, text
    assert r["checkers"] and all(c["passed"] for c in r["checkers"]), text
    assert r["passed"], text
