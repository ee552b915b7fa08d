"""The replicated coordinator with real processes (issue 3, item 7).

Each test starts its own coordinators on their own loopback addresses with a
20 ms Raft tick (elections in a few hundred ms), drives them with RESP, and
checks what docs/coordinator.md promises: joining with -c/-P, forwarding
through followers, failover after kill -9 without losing an acknowledged
change, progress with a bare majority, catch-up after restart, full stop and
start, no commit without a majority, COORD.REMOVE and its refusal, and the
refusal of another cluster's data directory.
"""

import re
import threading
import time

import pytest

from harness import ProtocolError, RespError, run_cli, space_text, wait_for

PHONEBOOK = """space phonebook
key username
attributes first, last, int phone
subspace first, last, phone
create 8 partitions
tolerate 2 failures
"""


def test_tutorial_sequence_five_coordinators(cluster):
    cl = cluster()
    c1 = cl.add_coordinator(join=None)
    assert cl.wait_leader() is c1
    for _ in range(4):
        cl.add_coordinator(join=c1)   # returns once the new node is a voter

    leader = cl.wait_leader()
    st = leader.status(stale=False)
    assert sorted(e["address"] for e in st["coordinators"]) == sorted(
        c.addr for c in cl.coordinators)
    assert all(e["voter"] for e in st["coordinators"]), st["coordinators"]
    assert st["leader"] == leader.id
    ids = {c.id for c in cl.coordinators}
    assert len(ids) == 5, "coordinator ids are not distinct: %s" % ids

    # Every node holds the same map and sees the same five voters.
    cl.wait_converged()
    for c in cl.coordinators:
        s = wait_for(lambda: (lambda s: s if sum(e["voter"] for e in s["coordinators"]) == 5
                              else None)(c.status(stale=True)),
                     10, "%s to see five voters" % c.name)
        assert s["cluster_id"] == st["cluster_id"]

    # The tutorial's space (tolerate 2 needs three ONLINE daemons), added
    # through a follower: forwarded, and visible everywhere once acknowledged.
    for _ in range(3):
        cl.add_fake_daemon()
    wait_for(lambda: sum(d["state"] == "ONLINE" for d in leader.status()["daemons"]) == 3,
             10, "three ONLINE daemons")
    f1, f2 = cl.followers(leader)[:2]
    assert f1.call("SPACE.ADD", PHONEBOOK, timeout=5) == "OK"
    # a linearizable read through another follower right after the ack sees it
    assert f2.spaces() == ["phonebook"]
    desc = f2.call("SPACE.DESCRIBE", "phonebook")
    for c in cl.coordinators:
        wait_for(lambda: c.spaces(stale=True) == ["phonebook"], 10,
                 "%s to apply the new space" % c.name)
        assert c.call("SPACE.DESCRIBE", "phonebook", "STALE") == desc
    space = [s for s in leader.status()["spaces"] if s["name"] == "phonebook"][0]
    assert space["partitions"] == 8 and space["tolerate"] == 2
    cl.wait_converged()


class WriteStream(threading.Thread):
    """One client adding spaces w1, w2, ... one at a time through `targets`
    (rotating), retrying each on -TRYAGAIN, -NOQUORUM, connection errors and
    timeouts until it is acknowledged. A retry may find the space already
    there (an earlier attempt committed without its ack arriving): that write
    is recorded as 'exists'. Any other error stops the stream and is kept in
    .failure."""

    def __init__(self, targets, attempt_timeout=1.0):
        super().__init__(daemon=True)
        self.targets = targets
        self.attempt_timeout = attempt_timeout
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.records = []   # (name, outcome, t_sent of the answered attempt, t_answer)
        self.failure = None

    def acked(self):
        with self.lock:
            return [r for r in self.records if r[1] == "ok"]

    def run(self):
        i, k = 0, 0
        while not self.stop_event.is_set() and self.failure is None:
            i += 1
            name = "w%d" % i
            while not self.stop_event.is_set():
                nodes = [n for n in self.targets if n.live()]
                n = nodes[k % len(nodes)]
                k += 1
                t_sent = time.monotonic()
                try:
                    r = n.call("SPACE.ADD", space_text(name), timeout=self.attempt_timeout)
                    assert r == "OK", r
                    with self.lock:
                        self.records.append((name, "ok", t_sent, time.monotonic()))
                    break
                except RespError as e:
                    if "already exists" in e.text:
                        with self.lock:
                            self.records.append((name, "exists", t_sent, time.monotonic()))
                        break
                    if e.code not in ("TRYAGAIN", "NOQUORUM"):
                        self.failure = "%s via %s: %s" % (name, n.name, e.text)
                        break
                except (OSError, ProtocolError):
                    pass
                time.sleep(0.02)


def test_leader_kill9_under_writes_loses_nothing(cluster, measure):
    cl = cluster()
    cl.start_coordinators(5)
    cl.add_fake_daemon()
    old = cl.wait_leader()
    followers = cl.followers(old)

    ws = WriteStream(followers)
    ws.start()
    try:
        wait_for(lambda: len(ws.acked()) >= 20 or ws.failure, 20, "20 acknowledged writes")
        assert ws.failure is None, ws.failure
        t_kill = time.monotonic()
        old.kill9()
        wait_for(lambda: ws.failure or len([r for r in ws.acked() if r[2] > t_kill]) >= 20,
                 30, "20 writes acknowledged after the leader was killed")
        assert ws.failure is None, ws.failure
    finally:
        ws.stop_event.set()
        ws.join(timeout=10)

    after = [r for r in ws.acked() if r[2] > t_kill]
    first = min(r[3] for r in after) - t_kill
    measure("leader kill -9 -> first acknowledged write sent after it (tick 20 ms)",
            "%.0f ms" % (first * 1000))

    print("writes: %d acknowledged, %d found committed on retry, %d after the kill"
          % (len(ws.acked()), len([r for r in ws.records if r[1] == "exists"]), len(after)))
    new = cl.wait_leader()
    assert new is not old and new in followers
    # Every acknowledged write is there, in the order it was acknowledged
    # (one client, one write at a time: commit order is ack order).
    done = [r[0] for r in ws.records]
    acked = [r[0] for r in ws.records if r[1] == "ok"]
    for c in followers:
        listed = c.spaces()   # linearizable, through each survivor
        missing = [s for s in acked if s not in listed]
        assert not missing, "%s lost acknowledged writes %s" % (c.name, missing)
        pos = [listed.index(s) for s in done]
        assert pos == sorted(pos), "%s: writes out of order: %s" % (c.name, listed)
        extra = [s for s in listed if s not in done]
        assert len(extra) <= 1, "spaces nobody finished writing: %s" % extra
    cl.wait_converged()


def test_kill9_two_of_five_majority_keeps_committing(cluster):
    cl = cluster()
    cl.start_coordinators(5)
    old = cl.wait_leader()
    victim = cl.followers(old)[0]
    old.kill9()
    victim.kill9()
    survivors = cl.live_coordinators()
    assert len(survivors) == 3
    new = cl.wait_leader()
    assert new in survivors
    # Writes through every survivor commit, and each is read back
    # linearizably through every survivor.
    for i, c in enumerate(survivors):
        assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", str(100 + i)],
                        via=c) == "OK"
        for r in survivors:
            assert r.config_get("reprotect_delay_s") == 100 + i
    # The leader's status shows who it hears from (within an election timeout).
    def reach():
        return {e["address"]: e["reachable"] for e in new.status()["coordinators"]}
    wait_for(lambda: reach()[old.addr] is False and reach()[victim.addr] is False, 5,
             "the killed coordinators to show unreachable")
    assert all(reach()[c.addr] for c in survivors)
    cl.wait_converged()


def test_restarted_coordinator_catches_up(cluster):
    # Compaction every 20 entries, so a coordinator that missed 60 changes
    # can only catch up from a snapshot.
    cl = cluster(coord_args=["--snapshot-every", "20"])
    cl.start_coordinators(3)
    leader = cl.wait_leader()

    # A follower misses 60 changes, then comes back.
    f = cl.followers(leader)[0]
    f_last = f.raft()["last_index"]
    f.kill9()
    for i in range(1, 61):
        assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", str(i)], via=leader) == "OK"
    assert leader.raft()["snapshot_index"] > f_last, "the leader did not compact its log"
    f.restart()
    m = cl.wait_converged(timeout=20)
    assert f.config_get("reprotect_delay_s", stale=True) == 60
    assert m == leader.map_bytes()
    assert f.raft()["applied"] >= leader.raft()["snapshot_index"]

    # The leader is killed, the others go on; it comes back as a follower
    # and catches up too.
    leader.kill9()
    new = cl.wait_leader()
    assert new is not leader
    for i in range(61, 101):
        assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", str(i)], via=new) == "OK"
    leader.restart()
    cl.wait_converged(timeout=20)
    assert leader.config_get("reprotect_delay_s", stale=True) == 100
    assert cl.wait_leader() is new, "the restarted old leader disrupted the new one"


def test_pipelined_burst_keeps_the_leader(cluster):
    """200 admin writes pipelined on one connection: all acknowledged, and the
    burst does not cost the leader its leadership (its heartbeats must not
    starve while it commits)."""
    cl = cluster()
    cl.start_coordinators(3)
    leader = cl.wait_leader()
    term = leader.raft()["term"]
    with leader.conn(timeout=20) as conn:
        conn.send_many([("CLUSTER.CONFIG", "SET", "reprotect_delay_s", str(i))
                        for i in range(1, 201)])
        replies = [conn.read() for _ in range(200)]
    bad = [(i + 1, str(r)) for i, r in enumerate(replies) if r != "OK"]
    assert not bad, "%d of 200 not acknowledged, first: %s" % (len(bad), bad[:3])
    assert cl.wait_leader() is leader and leader.raft()["term"] == term
    cl.wait_converged()
    assert leader.config_get("reprotect_delay_s") == 200


def test_full_stop_and_start_loses_nothing(cluster):
    cl = cluster()
    cl.start_coordinators(3)
    fake = cl.add_fake_daemon()
    for name in ("alpha", "beta", "gamma"):
        assert cl.write(["SPACE.ADD", space_text(name, partitions=4)]) == "OK"
    assert cl.write(["SPACE.DROP", "beta"]) == "OK"
    settings = {"reprotect_delay_s": 77, "heartbeat_ms": 300, "ping_timeout_ms": 4000}
    for k, v in settings.items():
        assert cl.write(["CLUSTER.CONFIG", "SET", k, str(v)]) == "OK"
    fake.stop(shutdown=True)   # nothing changes the map any more
    before = cl.wait_converged()
    st_before = cl.wait_leader().status()

    for c in cl.coordinators:
        c.stop()               # SIGTERM, exit status 0 asserted
    for c in cl.coordinators:
        c.start(wait=False)
    for c in cl.coordinators:
        c.wait_ready()

    leader = cl.wait_leader()
    assert cl.wait_converged() == before
    st = leader.status()
    assert st["cluster_id"] == st_before["cluster_id"]
    assert st["map_version"] == st_before["map_version"]
    assert [s["name"] for s in st["spaces"]] == ["alpha", "gamma"]
    assert st["daemons"] == st_before["daemons"]
    for k, v in settings.items():
        assert st["settings"][k] == v
        assert leader.config_get(k) == v
    assert sorted(e["address"] for e in st["coordinators"]) == sorted(
        c.addr for c in cl.coordinators)
    # and it still commits
    assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "78"]) == "OK"


def _isolate(cl, node):
    others = [c for c in cl.coordinators if c is not node]
    node.fault_drop([c.id for c in others])
    for c in others:
        c.fault_drop([node.id])


def test_isolated_coordinator_cannot_commit(cluster):
    cl = cluster(test_faults=True)
    cl.start_coordinators(3)
    cl.add_fake_daemon()
    old = cl.wait_leader()
    majority = cl.followers(old)
    assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "10"]) == "OK"
    cl.wait_converged()

    _isolate(cl, old)
    # The cut-off leader must not acknowledge anything: -TRYAGAIN or no
    # answer, never +OK (nor any other answer claiming an outcome).
    results = {}

    def isolated_write(key, args):
        try:
            results[key] = old.call(*args, timeout=3.0)
        except RespError as e:
            results[key] = e
        except OSError as e:   # timeout: no answer
            results[key] = e
    threads = [threading.Thread(target=isolated_write, args=(k, a)) for k, a in (
        ("config", ["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "777"]),
        ("space", ["SPACE.ADD", space_text("minority")]))]
    for t in threads:
        t.start()

    # Meanwhile the majority elects a leader and commits.
    new = cl.wait_leader(among=majority)
    assert new is not old
    assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "555"], via=majority) == "OK"
    assert cl.write(["SPACE.ADD", space_text("majority")], via=majority) == "OK"
    for t in threads:
        t.join(timeout=10)
    print("isolated leader's answers: %r" % results)
    assert len(results) == 2
    for k, r in results.items():
        assert isinstance(r, OSError) or (isinstance(r, RespError) and r.code in (
            "TRYAGAIN", "NOQUORUM")), "isolated node answered %s write with %r" % (k, r)

    # The old leader stepped down (check-quorum) and still has neither write.
    wait_for(lambda: old.raft()["role"] != "leader", 5, "the isolated leader to step down")
    r = old.try_call("CLUSTER.CONFIG", "SET", "reprotect_delay_s", "778", timeout=3.0)
    assert isinstance(r, OSError) or (isinstance(r, RespError) and r.code in (
        "TRYAGAIN", "NOQUORUM")), r
    assert old.config_get("reprotect_delay_s", stale=True) == 10
    assert "minority" not in old.spaces(stale=True)

    for c in cl.coordinators:
        c.fault_heal()
    cl.wait_leader()
    cl.wait_converged()
    for c in cl.coordinators:
        assert c.config_get("reprotect_delay_s", stale=True) == 555
        names = c.spaces(stale=True)
        assert "majority" in names and "minority" not in names, names


def test_coord_remove(cluster):
    cl = cluster()
    cl.start_coordinators(3)
    leader = cl.wait_leader()
    f1, f2 = cl.followers(leader)

    # Unknown id.
    with pytest.raises(RespError) as e:
        leader.call("COORD.REMOVE", "999")
    assert e.value.code == "ERR"

    # With f1 stopped, removing f2 would leave {leader, f1} with one
    # reachable voter out of a needed two: refused, and nothing changes
    # (also through `keel rm-coordinator`, exit status 1).
    f1.stop()
    wait_for(lambda: not cl.coord_entry(leader.status(stale=True), f1)["reachable"], 10,
             "the leader to see f1 unreachable")
    with pytest.raises(RespError) as e:
        leader.call("COORD.REMOVE", str(f2.id))
    assert e.value.code == "ERR", e.value.text
    rc, out, err = run_cli("rm-coordinator", "-h", f2.host, "-p", f2.port, f2.id)
    assert rc == 1 and err, (rc, out, err)
    assert cl.coord_entry(leader.status(), f2)["voter"] is True
    assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "5"], via=leader) == "OK"

    # f1 back: removing a follower now succeeds and it leaves the config
    # everywhere; the two that remain still commit.
    f1.start()
    wait_for(lambda: cl.coord_entry(leader.status(stale=True), f1)["reachable"], 10,
             "the leader to see f1 again")
    rc, out, err = run_cli("rm-coordinator", "-h", f1.host, "-p", f1.port, f2.id)
    assert rc == 0, (rc, out, err)
    f2.removed = True
    for c in (leader, f1):
        wait_for(lambda: cl.coord_entry(c.status(stale=True), f2) is None, 10,
                 "%s to drop the removed coordinator from its config" % c.name)
        assert len(c.status(stale=True)["coordinators"]) == 2
    assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "6"],
                    via=[leader, f1]) == "OK"
    f2.kill9()
    assert cl.write(["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "7"],
                    via=[leader, f1]) == "OK"
    cl.wait_converged([leader, f1])


def _hexes(text):
    return {h.lstrip("0").lower() for h in re.findall(r"\b(?:0x)?([0-9a-fA-F]{8,})\b", text)}


def test_data_dir_of_another_cluster_is_refused(cluster):
    a = cluster()
    a.start_coordinators(1)
    b = cluster()
    b.start_coordinators(1)
    id_a = a.wait_leader().status()["cluster_id"]
    id_b = b.wait_leader().status()["cluster_id"]
    assert id_a != id_b
    stranger = b.coordinators[0]
    stranger.stop()
    stranger.join = a.coordinators[0]     # B's directory, -c pointing at A
    rc, log = stranger.start_expect_exit()
    assert rc == 1, "exit status %s:\n%s" % (rc, log)
    found = _hexes(log)
    assert id_a.lstrip("0").lower() in found and id_b.lstrip("0").lower() in found, (
        "the refusal does not name both cluster ids (%s, %s):\n%s" % (id_a, id_b, log))
    # A is unaffected and did not gain a member.
    assert len(a.wait_leader().status()["coordinators"]) == 1


def test_joining_coordinator_answers_while_join_pending(cluster):
    """A coordinator whose COORD.JOIN has no answer yet (the node it joins
    through is stopped) already answers PING: every command must get a reply
    (an error is fine) without crashing it; once the other node runs again
    the join completes."""
    cl = cluster()
    c1 = cl.add_coordinator(join=None)
    cl.wait_leader()
    c1.pause()
    c2 = cl.add_coordinator(join=c1, wait_voter=False)
    for args in (["INFO"], ["INFO", "raft"], ["CLUSTER.STATUS", "STALE"], ["CLUSTER.STATUS"],
                 ["CLUSTER.MAP", "STALE"], ["SPACE.LIST", "STALE"],
                 ["CLUSTER.CONFIG", "SET", "reprotect_delay_s", "9"], ["COORD.REMOVE", "1"],
                 ["DAEMON.HEARTBEAT", "1"]):
        r = c2.try_call(*args, timeout=2.0)
        assert not isinstance(r, OSError) or isinstance(r, TimeoutError), (
            "%s on a joining coordinator: %r" % (args[0], r))
        c2.check_running()
    c1.resume()
    cl.wait_voter(c2)
    cl.wait_converged()


def test_status_sums_the_reprotection_progress_daemons_report(cluster):
    """Daemons report the copies they send (bytes left, rate) and the log
    entries their catching-up replicas still replay with every heartbeat;
    the leader's CLUSTER.STATUS sums the ONLINE daemons' reports and derives
    an ETA (issue 4 item 5). A malformed report is refused."""
    cl = cluster()
    cl.start_coordinators(3)
    a, b = cl.add_fake_daemon(), cl.add_fake_daemon()
    a.progress = (2, 6000, 1000, 7)
    b.progress = (1, 3000, 500, 5)

    def summed():
        p = cl.wait_leader().status(stale=False)["protection"]
        return p if p["copy_bytes_left"] == 9000 else None
    p = wait_for(summed, 10, "both daemons' progress in CLUSTER.STATUS")
    assert (p["copies_running"], p["copy_bytes_per_s"], p["tail_entries_left"]) == (3, 1500, 12)
    assert p["eta_s"] == 6                  # 9000 bytes at 1500 bytes/s
    b.progress = (1, 3000, 0, 0)
    a.progress = (0, 0, 0, 0)
    wait_for(lambda: cl.wait_leader().status(stale=False)["protection"]["copy_bytes_per_s"] == 0,
             10, "the new reports")
    assert cl.wait_leader().status(stale=False)["protection"]["eta_s"] is None  # no rate yet
    b.stop(shutdown=True)   # a daemon that left counts no more
    a.progress = None       # an old-style heartbeat reports nothing
    wait_for(lambda: cl.wait_leader().status(stale=False)["protection"]["copy_bytes_left"] == 0,
             10, "progress of departed daemons dropped")
    assert cl.wait_leader().status(stale=False)["protection"]["eta_s"] == 0
    leader = cl.wait_leader()
    for bad in (["PROGRESS", "1", "2", "3"], ["PROGRESS", "1", "2", "x", "4"],
                ["PROGRESZ", "1", "2", "3", "4"]):
        try:
            leader.call("DAEMON.HEARTBEAT", str(a.id), *bad)
            raise AssertionError("accepted %r" % bad)
        except RespError as e:
            assert e.code == "ERR", e
