"""Replicated partitions with real processes (issue 4): no acknowledged write
is lost when daemons die, hang or come back.

Every test runs 3 coordinators (20 ms tick) and real `keel daemon`s with fast
failure detection (heartbeat 100 ms, ping_timeout 1000 ms) and a short
reprotect delay, writes through the daemons with a client that retries only
what it may retry, and checks at the end that every acknowledged write is
readable with its value (DESIGN I2).
"""

import threading
import time

from harness import ProtocolError, RespError, wait_for

PING_TIMEOUT_MS = 1000
HEARTBEAT_MS = 100


def _retryable(e):
    if isinstance(e, (OSError, ProtocolError)):
        return True
    return isinstance(e, RespError) and str(e).split(" ", 1)[0] in ("TRYAGAIN", "NOQUORUM")


def _call_retry(daemons, *args, timeout=15.0):
    """Sends args to live daemons in turn until one answers something other
    than a retryable error; returns that answer (a RespError is returned, not
    raised). Only for idempotent commands (PUT, GET, SEARCH, COUNT)."""
    deadline = time.monotonic() + timeout
    last = None
    i = 0
    while time.monotonic() < deadline:
        live = [d for d in daemons if d.live()]
        d = live[i % len(live)]
        i += 1
        try:
            return d.call(*args, timeout=2.0)
        except Exception as e:  # noqa: BLE001 - classified below
            if not _retryable(e):
                return e
            last = e
        time.sleep(0.05)
    raise AssertionError("%r kept failing for %.0f s: %r" % (args, timeout, last))


def _setup(cluster, ndaemons=3, tolerate=1, partitions=8, reprotect_s=1, log_retention=None):
    cl = cluster(tick_ms=20)
    cl.start_coordinators(3)
    settings = [("ping_timeout_ms", PING_TIMEOUT_MS), ("heartbeat_ms", HEARTBEAT_MS),
                ("reprotect_delay_s", reprotect_s)]
    if log_retention is not None:
        settings.append(("log_retention", log_retention))
    for name, value in settings:
        assert cl.write(["CLUSTER.CONFIG", "SET", name, str(value)]) == "OK"
    ds = [cl.add_daemon() for _ in range(ndaemons)]
    leader = cl.wait_leader()
    wait_for(lambda: sum(d["state"] == "ONLINE" for d in leader.status()["daemons"]) == ndaemons,
             10, "every daemon ONLINE")
    assert cl.write(["SPACE.ADD", "space kv key k attributes v, int n subspace v create %d "
                     "partitions tolerate %d failures" % (partitions, tolerate)]) == "OK"
    return cl, ds


def _wait_serving(daemons):
    wait_for(lambda: not isinstance(_call_retry(daemons, "COUNT", "kv"), Exception), 15,
             "every partition serving")


class Writer(threading.Thread):
    """PUTs unique keys through the daemons until stopped; records what was
    acknowledged. A PUT that failed with an unknown outcome is retried (PUT
    is idempotent), so every key ends acknowledged or reported failed."""

    def __init__(self, daemons, prefix="w"):
        super().__init__(daemon=True)
        self.daemons, self.prefix = daemons, prefix
        self.acked, self.failed = {}, []
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.is_set():
            key, val = "%s%d" % (self.prefix, i), "value-%d" % i
            try:
                r = _call_retry(self.daemons, "PUT", "kv", key, "v", val, timeout=20.0)
                if r == "OK":
                    self.acked[key] = val
                else:
                    self.failed.append((key, r))
            except AssertionError as e:
                self.failed.append((key, e))
            i += 1


def _check_all_readable(daemons, acked):
    lost = []
    for key, val in acked.items():
        r = _call_retry(daemons, "GET", "kv", key)
        if not isinstance(r, list) or r[1] != val.encode():
            lost.append((key, r))
    assert not lost, "acknowledged writes lost: %r" % lost[:10]


def _wait_protected(leader, timeout=30):
    def ok():
        st = leader.status()
        return st["protection"]["fully_protected"] and all(
            s["health"]["DEGRADED"] == 0 and s["health"]["UNAVAILABLE"] == 0 for s in st["spaces"])
    wait_for(ok, timeout, "full protection restored")


def test_replicated_writes_reach_every_replica(cluster):
    cl, ds = _setup(cluster)
    _wait_serving(ds)
    for i in range(30):
        assert _call_retry(ds, "PUT", "kv", "k%d" % i, "v", "x%d" % i, "n", str(i)) == "OK"
    # every daemon answers every key (forwarding to the primary)
    for d in ds:
        for i in range(0, 30, 7):
            assert d.call("GET", "kv", "k%d" % i)[1] == ("x%d" % i).encode()
    assert _call_retry(ds, "COUNT", "kv") == 30
    assert _call_retry(ds, "COUNT", "kv", "n", ">=", "10") == 20
    found = _call_retry(ds, "SEARCH", "kv", "v", "=", "x7")
    assert len(found) == 1 and found[0][1] == b"k7"
    assert _call_retry(ds, "ADD", "kv", "k1", "n", "5") == 6


def test_kill9_daemon_under_writes_loses_nothing(cluster, measure):
    cl, ds = _setup(cluster)
    _wait_serving(ds)
    w = Writer(ds)
    w.start()
    time.sleep(1.0)
    victim = ds[0]
    t0 = time.monotonic()
    victim.kill9()
    n0 = len(w.acked)
    wait_for(lambda: len(w.acked) > n0 + 20, 15, "writes acknowledged after the kill")
    measure("daemon kill -9 -> 20 more writes acknowledged (ping_timeout %d ms)" % PING_TIMEOUT_MS,
            "%d ms" % ((time.monotonic() - t0) * 1000))
    time.sleep(0.5)
    w.halt.set()
    w.join(30)
    assert not w.failed, w.failed[:5]
    assert len(w.acked) > 50
    _check_all_readable(ds, w.acked)
    _wait_protected(cl.wait_leader())


def test_sigstop_primary_is_replaced_and_steps_down(cluster):
    cl, ds = _setup(cluster)
    _wait_serving(ds)
    for i in range(20):
        assert _call_retry(ds, "PUT", "kv", "s%d" % i, "v", "before") == "OK"
    victim = ds[1]
    victim.pause()
    try:
        # the others take over its partitions once its lease has run out
        for i in range(20):
            assert _call_retry(ds[:1] + ds[2:], "PUT", "kv", "s%d" % i, "v", "after") == "OK"
    finally:
        victim.resume()
    # the paused daemon lost its lease: it must not serve the old values; it
    # either forwards to the new primaries or refuses
    for i in range(20):
        r = _call_retry([victim], "GET", "kv", "s%d" % i, timeout=20)
        assert isinstance(r, list) and r[1] == b"after", (i, r)
    _wait_protected(cl.wait_leader())


def test_backup_then_primary_of_a_partition_in_a_row(cluster):
    cl, ds = _setup(cluster, ndaemons=4, tolerate=2, partitions=4)
    _wait_serving(ds)
    w = Writer(ds, prefix="r")
    w.start()
    time.sleep(0.8)
    ds[3].kill9()
    time.sleep(1.5)
    ds[0].kill9()
    time.sleep(1.5)
    w.halt.set()
    w.join(40)
    assert not w.failed, w.failed[:5]
    _check_all_readable(ds, w.acked)


def test_returning_daemon_catches_up_and_rejoins(cluster):
    cl, ds = _setup(cluster, reprotect_s=30)  # it returns within the delay
    _wait_serving(ds)
    w = Writer(ds, prefix="c")
    w.start()
    time.sleep(0.8)
    ds[2].kill9()
    time.sleep(2.0)  # declared failed, its partitions degraded
    ds[2].restart()
    time.sleep(1.0)
    w.halt.set()
    w.join(30)
    assert not w.failed, w.failed[:5]
    leader = cl.wait_leader()
    _wait_protected(leader)  # re-added from its own log tail, not re-protected elsewhere
    _check_all_readable(ds, w.acked)
    # the returned daemon holds replicas again
    st = leader.status()
    d3 = [d for d in st["daemons"] if d["address"] == ds[2].addr][0]
    assert d3["state"] == "ONLINE"


def test_tolerate_0_partial_availability(cluster):
    cl, ds = _setup(cluster, tolerate=0, partitions=6)
    _wait_serving(ds)
    for i in range(40):
        assert _call_retry(ds, "PUT", "kv", "p%d" % i, "v", "x") == "OK"
    ds[0].kill9()
    leader = cl.wait_leader()
    wait_for(lambda: any(s["health"]["UNAVAILABLE"] > 0 for s in leader.status()["spaces"]), 10,
             "partitions of the dead daemon UNAVAILABLE")
    ok = unavailable = 0
    for i in range(40):
        r = _call_retry(ds[1:], "GET", "kv", "p%d" % i)
        if isinstance(r, RespError):
            assert str(r).startswith("UNAVAILABLE partition "), r
            unavailable += 1
        else:
            assert r[1] == b"x"
            ok += 1
    assert ok > 0 and unavailable > 0, (ok, unavailable)
    # it comes back: everything it held is served again
    ds[0].restart()
    for i in range(40):
        r = _call_retry(ds, "GET", "kv", "p%d" % i, timeout=20)
        assert isinstance(r, list) and r[1] == b"x", (i, r)


def test_retried_add_is_applied_once(cluster):
    """A write sent with SEQ client_id seq is applied once however often it is
    retried, through any daemon and across a failover of its primary: the
    client table is replicated state (DESIGN section 6)."""
    cl, ds = _setup(cluster)
    _wait_serving(ds)
    assert _call_retry(ds, "PUT", "kv", "ctr", "n", "0") == "OK"
    first = _call_retry(ds, "SEQ", "77", "1", "ADD", "kv", "ctr", "n", "5")
    assert first == 5
    for d in ds:  # retries through every daemon (forwarded to the primary)
        assert d.call("SEQ", "77", "1", "ADD", "kv", "ctr", "n", "5") == 5
    assert _call_retry(ds, "GET", "kv", "ctr")[3] == 5
    # a newer write of the same client is applied; an older one is refused
    assert _call_retry(ds, "SEQ", "77", "2", "ADD", "kv", "ctr", "n", "1") == 6
    r = _call_retry(ds, "SEQ", "77", "1", "ADD", "kv", "ctr", "n", "5")
    assert isinstance(r, RespError) and str(r).startswith("ERR stale request"), r
    # the primary dies: the retry on the new primary is still answered once
    primary = _primary_of(ds, "ctr")
    primary.kill9()
    r = _call_retry(ds, "SEQ", "77", "2", "ADD", "kv", "ctr", "n", "1", timeout=20)
    assert r == 6, r
    assert _call_retry(ds, "GET", "kv", "ctr")[3] == 6
    assert _primary_of(ds, "ctr") is not primary
    bad = _call_retry(ds, "SEQ", "77", "3", "GET", "kv", "ctr")
    assert isinstance(bad, RespError) and str(bad).startswith("ERR usage: SEQ"), bad


def _primary_of(daemons, key):
    """The daemon serving key's partition: a FWD request is never forwarded
    again, so only the primary answers it with the object."""
    def find():
        for d in daemons:
            if d.live() and isinstance(d.try_call("FWD", "GET", "kv", key), list):
                return d
        return None
    return wait_for(find, 15, "the primary of %r" % key)


def test_clean_shutdown_hands_off_primaries(cluster):
    """SIGTERM on a daemon while others hold replicas: it hands its primaries
    to in-sync backups before leaving (DESIGN section 6), so writes go on
    with at most a brief -TRYAGAIN (which clients retry), nothing
    acknowledged is lost, and no partition waits for a lease to expire."""
    cl, ds = _setup(cluster, reprotect_s=60)
    _wait_serving(ds)
    # leases long enough that a fail-over after a lease expiry would show
    cl.write(["CLUSTER.CONFIG", "SET", "ping_timeout_ms", "5000"])
    w = Writer(ds[1:], prefix="h")
    errors = []

    def probe():
        # one attempt each, no retries: what a client sees during the handoff
        i = 0
        while not w.halt.is_set():
            try:
                r = ds[1].call("PUT", "kv", "probe%d" % i, "v", "x", timeout=2.0)
                if r != "OK":
                    errors.append(r)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            i += 1
    w.start()
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    ds[0].stop()  # SIGTERM; exit status 0 asserted
    stopped = time.monotonic() - t0
    time.sleep(1.0)
    w.halt.set()
    w.join(30)
    t.join(10)
    assert not w.failed, w.failed[:5]
    _check_all_readable(ds[1:], w.acked)
    assert stopped < 4.5, "the daemon waited for a lease instead of handing off (%.1f s)" % stopped
    log = ds[0].log_text()
    assert "event=handoff_done" in log or "event=handoff_started" not in log, log[-2000:]
    # single-attempt requests saw at most brief retryable refusals
    bad = [e for e in errors if not _retryable(e)]
    assert not bad, bad[:5]
    print("single-attempt requests refused during the handoff: %d" % len(errors))


def test_daemon_contradicting_cluster_sync_is_refused(cluster):
    """A cluster that requires every daemon to fsync each write refuses a
    daemon started with another --sync policy, saying which (issue 4 item 4);
    a daemon with the required policy joins and serves."""
    cl = cluster(tick_ms=20)
    cl.start_coordinators(3)
    assert cl.write(["CLUSTER.CONFIG", "SET", "sync", "always"]) == "OK"
    assert cl.wait_leader().call("CLUSTER.CONFIG", "GET", "sync") == b"always"
    bad = cl.add_daemon(start=False, extra_args=["--sync", "batch"])
    rc, log = bad.start_expect_exit()
    assert rc == 1, log
    assert "requires sync=always" in log and "--sync batch" in log, log
    good = cl.add_daemon(extra_args=["--sync", "always"])
    leader = cl.wait_leader()
    wait_for(lambda: any(d["address"] == good.addr and d["state"] == "ONLINE"
                         for d in leader.status()["daemons"]), 10, "the --sync always daemon ONLINE")
    assert leader.status()["settings"]["sync"] == "always"


def test_drop_space_removes_its_data_everywhere(cluster):
    cl, ds = _setup(cluster)
    _wait_serving(ds)
    for i in range(20):
        assert _call_retry(ds, "PUT", "kv", "d%d" % i, "v", "x") == "OK"
    assert cl.write(["SPACE.DROP", "kv"]) == "OK"
    # a new space of the same name is a new space: empty
    assert cl.write(["SPACE.ADD", "space kv key k attributes v, int n create 8 partitions "
                     "tolerate 1 failures"]) == "OK"
    _wait_serving(ds)
    wait_for(lambda: _call_retry(ds, "COUNT", "kv") == 0, 10, "the new kv empty")
    for i in range(0, 20, 5):
        assert _call_retry(ds, "GET", "kv", "d%d" % i) is None
    # every daemon deleted the old space's data
    for d in ds:
        wait_for(lambda d=d: "event=space_data_dropped" in d.log_text(), 10,
                 "%s deleted the dropped space's data" % d.name)


def test_retry_while_first_attempt_commits_gets_its_result(cluster):
    """Regression: a SEQ retry that arrives while its first attempt is still
    being replicated must get the first attempt's result, not a result
    computed against the attempt's own effect (a CPUT failing its own
    condition, a DEL answering 0)."""
    cl, ds = _setup(cluster)
    _wait_serving(ds)
    assert _call_retry(ds, "PUT", "kv", "r", "v", "a", "n", "10") == "OK"
    primary = _primary_of(ds, "r")
    with primary.conn() as c:
        c.send_many([("SEQ", "5", "1", "CPUT", "kv", "r", "IF", "v", "a", "SET", "v", "b"),
                     ("SEQ", "5", "1", "CPUT", "kv", "r", "IF", "v", "a", "SET", "v", "b"),
                     ("SEQ", "5", "2", "ADD", "kv", "r", "n", "1"),
                     ("SEQ", "5", "2", "ADD", "kv", "r", "n", "1"),
                     ("SEQ", "5", "3", "DEL", "kv", "r"),
                     ("SEQ", "5", "3", "DEL", "kv", "r")])
        got = [c.read() for _ in range(6)]
    assert got == ["OK", "OK", 11, 11, 1, 1], got
    assert _call_retry(ds, "GET", "kv", "r") is None


def test_dead_backup_is_removed_without_waiting_for_its_lease(cluster):
    """A daemon killed -9 leaves the partitions it backs up at once: its
    primaries' connections to its replication port are refused, they report
    it, and the coordinator removes it as a backup (backups serve nothing, so
    no lease has to run out). With ping_timeout_ms at 10 s, writes to
    partitions whose primary is alive must not wait for it."""
    cl, ds = _setup(cluster)
    cl.write(["CLUSTER.CONFIG", "SET", "ping_timeout_ms", "10000"])
    _wait_serving(ds)
    keys = ["b%d" % i for i in range(24)]
    for k in keys:
        assert _call_retry(ds, "PUT", "kv", k, "v", "before") == "OK"
    victim = ds[2]
    alive_primary = [k for k in keys if _primary_of(ds, k) is not victim]
    victim.kill9()
    t0 = time.monotonic()
    for k in alive_primary:
        r = _call_retry(ds[:2], "PUT", "kv", k, "v", "after", timeout=20)
        assert r == "OK", (k, r)
    took = time.monotonic() - t0
    assert took < 5.0, "writes waited %.1f s: the dead backup was not removed early" % took
    log = "".join(d.log_text() for d in ds[:2])
    assert "event=backup_unreachable" in log
    for k in alive_primary:
        assert _call_retry(ds[:2], "GET", "kv", k)[1] == b"after"


def test_reprotection_by_full_copy_when_the_log_is_gone(cluster):
    """With a short log retention, a new replica (re-protection) and a
    returning one are too far behind for log replay: the primary sends a full
    copy (a consistent snapshot, then the log after it), and the partitions
    are PROTECTED again with every acknowledged write readable everywhere."""
    cl, ds = _setup(cluster, partitions=4, reprotect_s=1, log_retention=20)
    _wait_serving(ds)
    acked = {}
    for i in range(40):
        assert _call_retry(ds, "PUT", "kv", "f%d" % i, "v", "a%d" % i) == "OK"
        acked["f%d" % i] = "a%d" % i
    ds[0].kill9()
    for i in range(40, 400):  # far beyond the retained log
        assert _call_retry(ds[1:], "PUT", "kv", "f%d" % i, "v", "a%d" % i) == "OK"
        acked["f%d" % i] = "a%d" % i
    _wait_protected(cl.wait_leader(), timeout=40)
    logs = "".join(d.log_text() for d in ds[1:])
    assert "event=full_copy_installed" in logs, "no full copy was installed"
    _check_all_readable(ds[1:], acked)
    # the returning daemon is behind the retained log too: it gets copies
    ds[0].restart()
    for i in range(400, 420):
        assert _call_retry(ds, "PUT", "kv", "f%d" % i, "v", "a%d" % i) == "OK"
        acked["f%d" % i] = "a%d" % i
    _wait_protected(cl.wait_leader(), timeout=40)
    _check_all_readable(ds, acked)
    # every daemon's copy answers SEARCH the same (index entries came along)
    assert _call_retry(ds, "COUNT", "kv") == len(acked)
    # and the progress the daemons report drops back to nothing: no copy
    # or replay is left running once every partition is protected
    wait_for(lambda: (lambda p: p["copies_running"] == 0 and p["copy_bytes_left"] == 0 and
                      p["tail_entries_left"] == 0 and p["eta_s"] == 0)(
        cl.wait_leader().status(stale=False)["protection"]), 10, "no re-protection work left")


def test_failed_condition_is_not_answered_from_an_uncommitted_write(cluster):
    """Regression (found by the chaos runs): a CPUT whose condition fails
    against a write that is still uncommitted must not be answered before
    that write commits; otherwise a client sees CMPFAIL and then reads the
    very value it compared against (or the write is lost in a failover and
    the CMPFAIL was based on a value the object never had)."""
    cl, ds = _setup(cluster, ndaemons=2)
    _wait_serving(ds)
    assert _call_retry(ds, "PUT", "kv", "c", "v", "1") == "OK"
    primary = _primary_of(ds, "c")
    backup = [d for d in ds if d is not primary][0]
    backup.pause()  # the next write cannot commit until the backup is removed
    try:
        w = primary.conn(timeout=10.0)
        w.send("PUT", "kv", "c", "v", "2")
        time.sleep(0.2)
        c = primary.conn(timeout=10.0)
        c.send("CPUT", "kv", "c", "IF", "v", "1", "SET", "v", "3")
        time.sleep(0.3)
        # still uncommitted: the committed value is 1, and the CPUT has not
        # been answered from the pending 2
        assert primary.call("GET", "kv", "c", timeout=2.0)[1] == b"1"
        c.settimeout(0.3)
        try:
            early = c.read()
        except OSError:  # socket.timeout: nothing yet, as it must be
            early = None
        assert early is None, "answered %r from an uncommitted write" % (early,)
        c.settimeout(10.0)
        r = c.read()  # answered once the PUT committed (the backup removed)
        assert isinstance(r, RespError) and str(r).startswith("CMPFAIL"), r
        assert w.read() == "OK"
        assert primary.call("GET", "kv", "c", timeout=2.0)[1] == b"2"
        c.close()
        w.close()
    finally:
        backup.resume()


def test_blocking_rejoin_holds_writes_until_caught_up(cluster):
    """keel daemon --blocking: a daemon that returns too far behind for log
    replay gets full copies, and each primary holds the partition's writes
    from the copy's start until the daemon caught up (DESIGN section 6,
    docs/replication.md). Writers wait instead of failing, and nothing
    acknowledged is lost."""
    cl, ds = _setup(cluster, partitions=4, reprotect_s=60, log_retention=20)
    _wait_serving(ds)
    acked = {}
    ds[0].kill9()
    for i in range(300):  # far beyond the retained log, while it is away
        assert _call_retry(ds[1:], "PUT", "kv", "b%d" % i, "v", "a%d" % i) == "OK"
        acked["b%d" % i] = "a%d" % i
    w = Writer(ds[1:], prefix="bw")
    w.start()
    ds[0].extra_args = ["--blocking"]
    ds[0].restart()
    _wait_protected(cl.wait_leader(), timeout=40)  # within the reprotect delay: it came back
    w.halt.set()
    w.join(30)
    assert not w.failed, w.failed[:5]
    assert "blocking=1" in ds[0].log_text(), "the copy was not received as blocking"
    logs = "".join(d.log_text() for d in ds[1:])
    assert "event=writes_paused" in logs, "no primary held writes for the copy"
    resumed = [ln for ln in logs.splitlines() if "event=writes_resumed" in ln]
    assert resumed and all("reason=caught_up" in ln for ln in resumed), resumed
    acked.update(w.acked)
    _check_all_readable(ds, acked)
    assert _call_retry(ds, "COUNT", "kv") == len(acked)
