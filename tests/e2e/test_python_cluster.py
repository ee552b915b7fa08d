"""The Python client against a keel cluster: `keel.Client(host, port)` and
`keel.Admin(host, port)` given a coordinator's or a daemon's address find the
rest of the cluster themselves, and retry on failover by the rules in the
module documentation of clients/python/keel.

Two kinds of test:

- Real cluster (`keel local -c 3 -d 3 --tick-ms 20`, started once for the
  module on ports checked free): the phonebook space (tolerate 1 failures) is
  created through keel.Admin on the first coordinator; put / get / delete /
  cond_put / atomic_add work through a Client given the first coordinator, a
  follower coordinator, or a daemon; Admin works given a daemon; then one
  daemon is killed with SIGKILL and the same Client objects (one given that
  daemon's address, one given a coordinator's) still read every key whose
  partition's primary is alive, while keys on the dead daemon fail within the
  retry bound naming it. Failover of primaries is not relied on:
  ping_timeout_ms is raised first, so that the cluster's own failover stays
  out of the test. Exactly-once writes: the same SEQ ADD sent through two
  daemons (raw, and through Client.execute) adds once; a Client's own ADD
  re-sent with its client id and client_seq answers the original sum; an
  older client_seq is refused as stale. The module ends by stopping keel
  local with SIGINT (exit 0 expected); teardown kills it and its children by
  pid if needed.

- Failover with exactly-once retries (a second `keel local`, with
  ping_timeout_ms 1000 so that the coordinators fail a dead daemon over
  quickly): a thread calls atomic_add and cond_put without pause through a
  Client given daemon 1's address while daemon 1 is killed with SIGKILL;
  every call returns the right running total / answer (an ADD or CPUT
  applied twice would show as a wrong sum or a CPUT answering False), none
  raises, and the objects hold the totals afterwards.

- Scripted fakes (small RESP servers in this process that play coordinators
  and daemons): the retry rules exactly — every write goes out as SEQ with
  the Client's id and a client_seq that grows by one per write and stays the
  same on its retries, so ADD and CPUT are re-sent after any failover error
  (connection cut after sending, a timeout, TRYAGAIN "may or may not") like
  PUT and GET; ERR stale and UNAVAILABLE are raised at once; write calls of
  threads sharing a Client never overlap; retries stop at retry_timeout, admin calls follow "TRYAGAIN leader is host:port" and fail
  over when a coordinator dies, a daemon's stale NOSPACE is retried only when
  the coordinators know the space, a standalone server is never retried.

Every wait is bounded.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

import keel
from keel._resp import Connection
from conftest import HOST, KEEL_BIN, NeedMore, parse_reply

READY_TIMEOUT = 25.0   # keel local's own bound is 20 s
EXIT_TIMEOUT = 30.0    # daemons one at a time, then coordinators
JOHN = {"first": "John", "last": "Smith", "phone": 6075551024}
PHONEBOOK_T1 = """space phonebook
key username
attributes first, last, int phone
subspace first, last, phone
create 8 partitions
tolerate 1 failures
"""


# ============================================================================
# A real cluster
# ============================================================================

def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(ncoords, ndaemons):
    """(P, Q): coordinator ports P.., daemon ports Q.., all free together with
    their +10000 peer ports."""
    for _ in range(200):
        p = random.randrange(2100, 11000)
        q = p + 40
        ports = list(range(p, p + ncoords)) + list(range(q, q + ndaemons))
        if all(port_free(x) and port_free(x + 10000) for x in ports):
            return p, q
    raise AssertionError("no free ports found")


class LocalCluster:
    """One `keel local` process; its output is collected by a thread."""

    def __init__(self, data_dir, p, q):
        self.p, self.q = p, q
        self.data_dir = str(data_dir)
        self.argv = [KEEL_BIN, "local", "-c", "3", "-d", "3", "-D", self.data_dir,
                     "--base-port", str(p), "--daemon-base-port", str(q), "--tick-ms", "20"]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cv:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cv.notify_all()
        with self.cv:
            self.lines.append(None)  # EOF
            self.cv.notify_all()

    def text(self):
        with self.cv:
            return "\n".join(x for x in self.lines if x is not None)

    def wait_line(self, pattern, timeout):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    if line is not None and rx.search(line):
                        return rx.search(line)
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] is None):
                    break
                self.cv.wait(left)
        raise AssertionError("no line matching %r within %ss; output:\n%s"
                             % (pattern, timeout, self.text()))

    def children(self):
        """name -> (pid, (host, port)) of every child keel local started."""
        out = {}
        for m in re.finditer(r"started (\S+) \(pid (\d+)\) on ([\d.]+):(\d+)", self.text()):
            out[m.group(1)] = (int(m.group(2)), (m.group(3), int(m.group(4))))
        return out

    def coordinator(self, i):
        return (HOST, self.p + i)

    def daemon(self, i):
        return (HOST, self.q + i)

    def stop(self):
        """SIGINT, then the exit status (None if it did not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join(timeout=5)
        return rc

    def kill_all(self):
        """Last resort: SIGKILL keel local and every child it named that
        still runs with our data directory on its command line (a pid that
        was reused by another process is left alone)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid, _ in self.children().values():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.data_dir.encode() in cmdline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def local_cluster(tmp_path_factory, settings=()):
    """Generator for a fixture: a ready 3+3 keel local with the settings
    given ((name, value), set through keel.Admin first) and the phonebook
    space (tolerate 1 failures) created through keel.Admin on the first
    coordinator."""
    p, q = pick_ports(3, 3)
    lc = LocalCluster(tmp_path_factory.mktemp("keel-local") / "cluster", p, q)
    try:
        lc.wait_line(r"keel local: ready: cluster [0-9a-f]+ with 3 coordinators and 3 daemons",
                     READY_TIMEOUT)
        with keel.Admin(*lc.coordinator(0)) as a:
            assert a.mode == "coordinator"
            for name, value in settings:
                assert a.config_set(name, value) is True
            assert a.add_space(PHONEBOOK_T1) is True
            assert a.list_spaces() == ["phonebook"]
        yield lc
        rc = lc.stop()
        assert rc == 0, "keel local exited %s on SIGINT; output:\n%s" % (rc, lc.text())
    finally:
        lc.kill_all()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_cluster(tmp_path_factory)


def follower_of(lc):
    with keel.Admin(*lc.coordinator(0)) as a:
        st = a.cluster_status()
    followers = [c["address"] for c in st["coordinators"] if c["role"] == "follower"]
    assert followers, st
    host, port = followers[0].rsplit(":", 1)
    return host, int(port)


def check_search_and_count(c, prefix):
    """SEARCH/COUNT across daemons may not be built yet: then the daemons say
    so with ERR; once built they must answer correctly."""
    try:
        n = c.count("phonebook", {"last": prefix + "-count"})
    except keel.KeelError as e:
        assert e.code == "ERR" and "not built yet" in e.message, e
        return
    assert n == 2
    found = c.search("phonebook", {"last": prefix + "-count"})
    assert sorted(o["username"] for o in found) == [prefix + "-c1", prefix + "-c2"]


@pytest.mark.parametrize("entry", ["coordinator", "follower", "daemon"])
def test_data_commands_through_any_address(cluster, entry):
    addr = {"coordinator": cluster.coordinator(0), "follower": follower_of(cluster),
            "daemon": cluster.daemon(1)}[entry]
    with keel.Client(*addr) as c:
        assert c.mode == ("daemon" if entry == "daemon" else "coordinator")
        k = entry + "-jsmith"
        # The space was just created: a daemon whose map is behind answers
        # NOSPACE, which the client retries once the coordinators know it.
        assert c.put("phonebook", k, JOHN) is True
        assert c.get("phonebook", k) == JOHN
        c.put("phonebook", k, {"phone": 6075551025})
        assert c.get("phonebook", k) == dict(JOHN, phone=6075551025)
        assert c.cond_put("phonebook", k, {"last": "Smith"}, {"last": "Smith-Jones"}) is True
        assert c.cond_put("phonebook", k, {"last": "Smith"}, {"first": "Jack"}) is False
        assert c.get("phonebook", k) == {"first": "John", "last": "Smith-Jones",
                                         "phone": 6075551025}
        with pytest.raises(keel.KeelError) as ei:
            c.cond_put("phonebook", entry + "-nobody", {"last": "x"}, {"first": "y"})
        assert ei.value.code == "NOTFOUND"
        assert c.atomic_add("phonebook", k, {"phone": 10}) == {"phone": 6075551035}
        assert c.atomic_add("phonebook", k, {"phone": -35}) == {"phone": 6075551000}
        with pytest.raises(keel.KeelError) as ei:
            c.atomic_add("phonebook", entry + "-nobody", {"phone": 1})
        assert ei.value.code == "NOTFOUND"
        with pytest.raises(keel.KeelError) as ei:
            c.put("phonebook", k, {"age": 3})
        assert ei.value.code == "NOATTR"
        # A space nobody knows: NOSPACE at once (the coordinators confirm it).
        t0 = time.monotonic()
        with pytest.raises(keel.KeelError) as ei:
            c.get("nospace", k)
        assert ei.value.code == "NOSPACE"
        assert time.monotonic() - t0 < 5
        c.put("phonebook", entry + "-c1", {"last": entry + "-count"})
        c.put("phonebook", entry + "-c2", {"last": entry + "-count"})
        check_search_and_count(c, entry)
        assert c.delete("phonebook", k) is True
        assert c.get("phonebook", k) is None
        assert c.delete("phonebook", k) is False
        assert c.ping() is True


def test_admin_given_a_daemon_finds_the_coordinators(cluster):
    with keel.Admin(*cluster.daemon(2)) as a:
        assert a.mode == "daemon"
        assert a.list_spaces() == ["phonebook"]
        assert "tolerate 1 failures" in a.describe_space("phonebook")
        st = a.cluster_status()
        assert sorted(d["address"] for d in st["daemons"]) == sorted(
            "%s:%d" % cluster.daemon(i) for i in range(3))
        assert a.config_get("heartbeat_ms") == "250"
    with keel.Admin(*follower_of(cluster)) as a:
        assert a.list_spaces() == ["phonebook"]


def raw_call(addr, *args):
    """One request on a new plain connection (keel._resp.Connection, no
    retries) to addr; a NOSPACE (the daemon's map is behind: nothing was
    applied) is asked again for at most 5 s. The reply, errors as values."""
    deadline = time.monotonic() + 5
    conn = Connection(addr[0], addr[1], timeout=5)
    try:
        while True:
            r = conn.call(*args)
            if not (isinstance(r, keel.KeelError) and r.code == "NOSPACE"
                    and time.monotonic() < deadline):
                return r
            time.sleep(0.05)
    finally:
        conn.close()


def test_seq_add_through_two_daemons_adds_once(cluster):
    k = "seq-add"
    with keel.Client(*cluster.coordinator(0)) as c:
        c.put("phonebook", k, {"phone": 100})
        # Raw: the same (client id, client_seq) through daemon 1 and daemon 2
        # (each forwards to the partition's primary, or is it): one ADD.
        cid = random.randrange(1, 1 << 63)
        add = ("SEQ", cid, 1, "ADD", "phonebook", k, "phone", 5)
        assert raw_call(cluster.daemon(0), *add) == 105
        assert raw_call(cluster.daemon(1), *add) == 105
        assert raw_call(cluster.daemon(0), *add) == 105
        assert c.get("phonebook", k)["phone"] == 105
        # A later client_seq is a new write; the older one is now stale.
        assert raw_call(cluster.daemon(1), "SEQ", cid, 2, "ADD", "phonebook", k, "phone", 5) == 110
        r = raw_call(cluster.daemon(0), *add)
        assert isinstance(r, keel.KeelError) and r.code == "ERR", r
        assert r.message.startswith("stale request"), r
        # A SEQ given to Client.execute is sent as it is, by Clients given
        # two different daemons: applied once; the stale one is raised at
        # once (not retried).
        cid2 = random.randrange(1, 1 << 63)
        add2 = ("SEQ", cid2, 7, "ADD", "phonebook", k, "phone", 1)
        with keel.Client(*cluster.daemon(0)) as c0, keel.Client(*cluster.daemon(1)) as c1:
            assert c0.execute(*add2) == 111
            assert c1.execute(*add2) == 111
            t0 = time.monotonic()
            with pytest.raises(keel.KeelError) as ei:
                c1.execute("SEQ", cid2, 6, "ADD", "phonebook", k, "phone", 1)
            assert ei.value.code == "ERR" and "stale request" in ei.value.message
            assert time.monotonic() - t0 < 1
        assert c.get("phonebook", k)["phone"] == 111
        # The Client's own writes carry its id and client_seq: re-sending
        # its last ADD with them through another daemon answers the original
        # sum and adds nothing; its previous client_seq is stale.
        assert c.atomic_add("phonebook", k, {"phone": 10}) == {"phone": 121}
        mine = ("SEQ", c.client_id, c._client_seq, "ADD", "phonebook", k, "phone", 10)
        assert raw_call(cluster.daemon(2), *mine) == 121
        assert c.get("phonebook", k)["phone"] == 121
        r = raw_call(cluster.daemon(2), "SEQ", c.client_id, c._client_seq - 1,
                     "ADD", "phonebook", k, "phone", 10)
        assert isinstance(r, keel.KeelError) and r.message.startswith("stale request"), r
        # A retried CPUT and DEL answer what their first attempt did.
        assert c.cond_put("phonebook", k, {"phone": 121}, {"last": "x"}) is True
        cput = ("SEQ", c.client_id, c._client_seq, "CPUT", "phonebook", k,
                "IF", "phone", 121, "SET", "last", "x")
        assert raw_call(cluster.daemon(1), *cput) == "OK"
        assert c.delete("phonebook", k) is True
        dele = ("SEQ", c.client_id, c._client_seq, "DEL", "phonebook", k)
        assert raw_call(cluster.daemon(0), *dele) == 1
        assert c.get("phonebook", k) is None


def test_seq_retry_while_its_first_attempt_commits(cluster):
    """A retry that reaches the primary while the first attempt is still
    being replicated (here: pipelined right behind it) is answered with the
    first attempt's result, not computed again on top of its effect."""
    with keel.Client(*cluster.coordinator(0)) as c:
        for i in range(5):
            k = "seq-pending-%d" % i
            c.put("phonebook", k, {"last": "a", "phone": 1})
            cid = random.randrange(1, 1 << 63)
            cput = ("SEQ", cid, 1, "CPUT", "phonebook", k, "IF", "last", "a", "SET", "last", "b")
            add = ("SEQ", cid, 2, "ADD", "phonebook", k, "phone", 10)
            dele = ("SEQ", cid, 3, "DEL", "phonebook", k)
            conn = Connection(*cluster.daemon(i % 3), timeout=5)
            try:
                got = conn.call_many([cput, cput, add, add, dele, dele])
            finally:
                conn.close()
            assert [str(x) for x in got] == ["OK", "OK", "11", "11", "1", "1"], (k, got)
            assert c.get("phonebook", k) is None


def test_client_moves_on_when_its_daemon_dies(cluster):
    """Runs last in the module: it kills a daemon."""
    victim_name = "daemon-3"
    pid, victim = cluster.children()[victim_name]
    assert victim == cluster.daemon(2)
    victim_text = "%s:%d" % victim
    keys = ["dies-%d" % i for i in range(12)]
    # Keep the coordinators from declaring the victim failed while the test
    # reads (the cluster's own failover is not what this test is about): its
    # partitions then answer TRYAGAIN naming it, and only those.
    with keel.Admin(*cluster.coordinator(0)) as a:
        a.config_set("ping_timeout_ms", 60000)
    with keel.Client(*cluster.coordinator(0)) as w:
        for i, k in enumerate(keys):
            w.put("phonebook", k, {"first": k, "phone": i})
    # Clients that have used the victim before it dies: one given its
    # address, one given a coordinator's (whose current daemon may be any).
    on_victim = keel.Client(*victim, retry_timeout=1.0)
    via_coord = keel.Client(*cluster.coordinator(1), retry_timeout=1.0)
    try:
        for c in (on_victim, via_coord):
            for i, k in enumerate(keys):
                assert c.get("phonebook", k) == {"first": k, "last": "", "phone": i}
        assert on_victim.mode == "daemon"

        os.kill(pid, signal.SIGKILL)
        cluster.wait_line(r"%s \(%s\) was killed by signal 9"
                          % (victim_name, re.escape(victim_text)), 10)

        for c in (on_victim, via_coord):
            ok, failed = [], []
            for i, k in enumerate(keys):
                t0 = time.monotonic()
                try:
                    got = c.get("phonebook", k)
                except keel.KeelError as e:
                    # Only a key whose partition's primary was the victim may
                    # fail, within the bound, and the error says so.
                    assert e.code in ("TRYAGAIN", "UNAVAILABLE", "CONNECTION"), e
                    if e.code != "UNAVAILABLE":
                        assert victim_text in e.message, e
                    failed.append(k)
                else:
                    assert got == {"first": k, "last": "", "phone": i}
                    ok.append(k)
                assert time.monotonic() - t0 < 1.0 + 2.5
            # Primaries are spread over the daemons, so keys live on the two
            # that are alive too, and they are read through the same Client
            # object that was using the dead daemon.
            assert ok, failed
    finally:
        on_victim.close()
        via_coord.close()


@pytest.fixture
def quick_failover_cluster(tmp_path_factory):
    """A second keel local whose coordinators fail a daemon after 1 s."""
    yield from local_cluster(tmp_path_factory, [("ping_timeout_ms", 1000)])


class CountingClient(keel.Client):
    """A Client that records every attempt of its calls that failed with an
    error it retries (CONNECTION, TRYAGAIN, NOQUORUM)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.failures = []

    def _attempt(self, addr, args, deadline, first):
        r = super()._attempt(addr, args, deadline, first)
        if isinstance(r, keel.KeelError) and r.code in ("CONNECTION", "TRYAGAIN", "NOQUORUM"):
            self.failures.append((args[3] if args[0] == "SEQ" else args[0], r))
        return r


def test_writes_retried_across_a_failover_apply_once(quick_failover_cluster):
    """A thread writes without pause through a Client given daemon 1 while
    daemon 1 is killed: every ADD returns the running total and every CPUT
    (each conditioned on the value the previous one wrote) answers True, so
    none was applied twice, and none raises."""
    lc = quick_failover_cluster
    victim_name = "daemon-1"
    pid, victim = lc.children()[victim_name]
    assert victim == lc.daemon(0)
    # Enough keys that some live in partitions whose primary is the victim
    # (8 partitions over 3 daemons).
    keys = ["fo-%d" % i for i in range(24)]
    totals = {k: 0 for k in keys}
    versions = {k: 0 for k in keys}
    c = CountingClient(*victim, retry_timeout=15)
    for k in keys:
        assert c.put("phonebook", k, {"phone": 0, "last": "v0"}) is True
    state = {"ops": 0, "ops_at_kill": None, "error": None}
    stop = threading.Event()

    def writer():
        try:
            while not stop.is_set():
                for k in keys:
                    totals[k] += 1
                    got = c.atomic_add("phonebook", k, {"phone": 1})
                    assert got == {"phone": totals[k]}, (k, got, totals[k])
                    v = versions[k]
                    assert c.cond_put("phonebook", k, {"last": "v%d" % v},
                                      {"last": "v%d" % (v + 1)}) is True, (k, v)
                    versions[k] = v + 1
                    assert c.cond_put("phonebook", k, {"last": "v%d" % v},
                                      {"first": "never"}) is False, (k, v)
                    state["ops"] += 3
        except BaseException as e:  # reported by the main thread
            state["error"] = e

    t = threading.Thread(target=writer, daemon=True)
    try:
        t.start()
        deadline = time.monotonic() + 10
        while state["ops"] < 3 * len(keys) and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.01)
        assert state["error"] is None, state["error"]
        assert state["ops"] >= 3 * len(keys)
        before = len(c.failures)
        os.kill(pid, signal.SIGKILL)   # while the writer has a request out
        state["ops_at_kill"] = state["ops"]
        lc.wait_line(r"%s \(%s\) was killed by signal 9"
                     % (victim_name, re.escape("%s:%d" % victim)), 10)
        # Run until every key was written twice after the kill (so its
        # partition has failed over), within a bound.
        deadline = time.monotonic() + 20
        while (state["ops"] < state["ops_at_kill"] + 6 * len(keys)
               and time.monotonic() < deadline and t.is_alive()):
            time.sleep(0.02)
        stop.set()
        t.join(timeout=20)
        assert not t.is_alive()
        failures = c.failures[before:]
        assert state["error"] is None, "%r; failed attempts after the kill: %s" % (
            state["error"], failures)
        assert state["ops"] >= state["ops_at_kill"] + 6 * len(keys)
        # The writes did fail over: some attempt failed after the kill and
        # was retried (the answers above are those of the retries).
        assert failures, "no attempt failed after the kill"
        for k in keys:
            assert c.get("phonebook", k) == {"first": "", "last": "v%d" % versions[k],
                                             "phone": totals[k]}, k
        print("attempts that failed after the kill and were retried: %s"
              % [(cmd, str(e)[:80]) for cmd, e in failures])
    finally:
        stop.set()
        t.join(timeout=20)
        c.close()


# ============================================================================
# Scripted fakes
# ============================================================================

CLOSE = object()   # a handler result: close the connection without replying


def bulk(text):
    b = text.encode() if isinstance(text, str) else text
    return b"$%d\r\n%s\r\n" % (len(b), b)


def err(text):
    return b"-" + text.encode() + b"\r\n"


def integer(n):
    return b":%d\r\n" % n


OK = b"+OK\r\n"


def unseq(args):
    """The write inside SEQ client_id client_seq <write>, else args."""
    return args[3:] if args and args[0].upper() == "SEQ" and len(args) > 3 else args

NIL = b"$-1\r\n"
DESC = ("space phonebook\nkey username\nattributes string first, string last, int phone\n"
        "subspace first, last, phone\ncreate 8 partitions\ntolerate 1 failures\n")


def flat(obj):
    parts = [b"*%d\r\n" % (2 * len(obj))]
    for name, value in obj.items():
        parts.append(bulk(name))
        parts.append(integer(value) if isinstance(value, int) else bulk(value))
    return b"".join(parts)


class FakeServer:
    """A RESP server on a free port of 127.0.0.1; handle(args) (args: list
    of str) returns the reply bytes or CLOSE. Every request is recorded.
    stop() closes the listener and every connection, so that the port
    refuses connections and clients see their sockets closed."""

    def __init__(self, handle):
        self.handle = handle
        self.requests = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
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
        while not self.stopped.is_set():
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                if self.stopped.is_set():
                    s.close()
                    return
                self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        buf = b""
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
                args = [a.decode("utf-8", "replace") for a in args]
                with self.lock:
                    self.requests.append(args)
                r = self.handle(args)
                if r is CLOSE:
                    s.shutdown(socket.SHUT_RDWR)
                    return
                s.sendall(r)
        except OSError:
            return
        finally:
            s.close()

    def count(self, cmd):
        """Requests of command cmd, plain or inside SEQ."""
        with self.lock:
            return sum(1 for a in self.requests if unseq(a)[0].upper() == cmd)

    def seqs(self):
        """(client_id, client_seq, command) of every SEQ request, in order."""
        with self.lock:
            return [(int(a[1]), int(a[2]), a[3].upper()) for a in self.requests
                    if a[0].upper() == "SEQ"]

    def stop(self):
        with self.lock:
            self.stopped.set()
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.ls.close()
        self.thread.join(timeout=5)


class FakeCluster:
    """Fake coordinators and daemons. The coordinators answer INFO,
    CLUSTER.STATUS (every daemon in self.online is ONLINE; self.leader is the
    leader) and SPACE.DESCRIBE/SPACE.LIST (the spaces in self.spaces); a
    coordinator's other commands go to coord_handler(i, args). The daemons
    answer INFO (the first coordinator as theirs) and send data commands to
    data(i, args)."""

    def __init__(self, ncoords=1, ndaemons=2, data=None, coord_handler=None):
        self.spaces = {"phonebook"}
        self.data = data or (lambda i, args: err("ERR no script"))
        self.coord_handler = coord_handler or (lambda i, args: err("ERR no script"))
        self.coords = [FakeServer(self._coord(i)) for i in range(ncoords)]
        self.daemons = [FakeServer(self._daemon(i)) for i in range(ndaemons)]
        self.online = set(range(ndaemons))
        self.leader = 0

    def _coord(self, i):
        def handle(args):
            cmd = args[0].upper()
            if cmd == "INFO":
                return bulk("# Server\r\nmode:coordinator\r\ncoordinator_id:%d\r\n" % (i + 1))
            if cmd == "CLUSTER.STATUS":
                st = {"coordinators": [{"id": j + 1, "address": c.text,
                                        "role": "leader" if j == self.leader else "follower"}
                                       for j, c in enumerate(self.coords)],
                      "daemons": [{"id": j + 1, "address": d.text,
                                   "state": "ONLINE" if j in self.online else "OFFLINE"}
                                  for j, d in enumerate(self.daemons)]}
                return bulk(json.dumps(st))
            if cmd == "SPACE.DESCRIBE":
                if args[1] in self.spaces:
                    return bulk(DESC)
                return err("NOSPACE no such space '%s'" % args[1])
            return self.coord_handler(i, args)
        return handle

    def _daemon(self, i):
        def handle(args):
            cmd = args[0].upper()
            if cmd == "INFO":
                return bulk("# Server\r\nmode:daemon\r\n\r\n# Lease\r\nlease_valid:1\r\n"
                            "coordinator:%s\r\ncoordinators:%s\r\n"
                            % (self.coords[0].text, ",".join(c.text for c in self.coords)))
            return self.data(i, unseq(args))
        return handle

    def count(self, cmd):
        return sum(s.count(cmd) for s in self.daemons)

    def seqs(self):
        return [x for s in self.daemons for x in s.seqs()]

    def stop(self):
        for s in self.coords + self.daemons:
            s.stop()


@pytest.fixture
def fakes():
    made = []

    def make(**kw):
        fc = FakeCluster(**kw)
        made.append(fc)
        return fc

    yield make
    for fc in made:
        fc.stop()


def scripted(first, then):
    """A data handler answering the first data command with first and every
    later one with then(args)."""
    state = {"n": 0}
    lock = threading.Lock()

    def data(i, args):
        with lock:
            state["n"] += 1
            n = state["n"]
        return first if n == 1 else then(args)
    return data


def success(args):
    return {"ADD": integer(7), "CPUT": OK, "PUT": OK, "DEL": integer(1),
            "GET": flat({"first": "A", "last": "B", "phone": 1})}[args[0].upper()]


NOT_APPLIED = [
    err("NOQUORUM this daemon cannot reach the coordinator majority; it serves nothing"),
    err("TRYAGAIN this daemon is not the partition's primary"),
    err("TRYAGAIN this partition is not serving yet"),
]
MAYBE_APPLIED = [
    err("TRYAGAIN the partition's primary changed; the write may or may not have been applied"),
    err("TRYAGAIN the partition's primary at 127.0.0.1:1 is unreachable from here"),
    CLOSE,  # the connection breaks after the request was sent
]

CALLS = {
    "ADD": lambda c: c.atomic_add("phonebook", "k", {"phone": 1}) == {"phone": 7},
    "CPUT": lambda c: c.cond_put("phonebook", "k", {"last": "B"}, {"first": "C"}) is True,
    "PUT": lambda c: c.put("phonebook", "k", {"first": "C"}) is True,
    "DEL": lambda c: c.delete("phonebook", "k") is True,
    "GET": lambda c: c.get("phonebook", "k") == {"first": "A", "last": "B", "phone": 1},
}


@pytest.mark.parametrize("first", NOT_APPLIED + MAYBE_APPLIED,
                         ids=["noquorum", "not-primary", "not-serving",
                              "may-or-may-not", "unreachable", "closed"])
@pytest.mark.parametrize("cmd", ["ADD", "CPUT", "PUT", "DEL", "GET"])
def test_fake_retry_rules(fakes, cmd, first):
    """Every failover error is retried, for writes too (ADD and CPUT
    included): a write goes out as SEQ and its retry carries the same pair,
    so the daemons apply it once."""
    fc = fakes(data=scripted(first, success))
    with keel.Client(*fc.coords[0].addr, retry_timeout=5) as c:
        assert c.mode == "coordinator"
        assert CALLS[cmd](c)
        assert fc.count(cmd) == 2
        if cmd == "GET":
            assert fc.seqs() == []
        else:
            assert fc.seqs() == [(c.client_id, 1, cmd)] * 2
        # No data command reaches a coordinator, no admin one a daemon.
        assert fc.coords[0].count(cmd) == 0
        assert all(s.count("SPACE.DESCRIBE") == 0 for s in fc.daemons)


@pytest.mark.parametrize("entry", ["coordinator", "daemon"])
def test_fake_writes_carry_seq_numbered_per_client(fakes, entry):
    """Every write is SEQ client_id client_seq <write>: a random 63-bit id
    per Client, client_seq one more for every write (each ADD of an
    atomic_add is a write); reads are not wrapped."""
    fc = fakes(data=lambda i, args: success(args))
    addr = fc.coords[0].addr if entry == "coordinator" else fc.daemons[0].addr
    c1 = keel.Client(*addr)
    c2 = keel.Client(*addr)
    try:
        assert c1.client_id != c2.client_id
        assert all(0 < c.client_id < (1 << 63) for c in (c1, c2))
        assert c1.put("phonebook", "k", {"first": "x"}) is True
        assert c1.get("phonebook", "k")["phone"] == 1
        assert c1.delete("phonebook", "k") is True
        assert c1.cond_put("phonebook", "k", {"last": "B"}, {"first": "C"}) is True
        assert c1.atomic_add("phonebook", "k", {"phone": 1, "phone2": 2}) == {
            "phone": 7, "phone2": 7}
        i1, i2 = c1.client_id, c2.client_id
        assert fc.seqs() == [(i1, 1, "PUT"), (i1, 2, "DEL"), (i1, 3, "CPUT"),
                             (i1, 4, "ADD"), (i1, 5, "ADD")]
        # c1 stayed on one daemon.
        sent = [a for d in fc.daemons for a in d.requests if a[0] != "INFO"]
        assert [a[0] for a in sent] == ["SEQ", "GET", "SEQ", "SEQ", "SEQ", "SEQ"]
        # The write itself follows the pair unchanged.
        assert sent[0][3:] == ["PUT", "phonebook", "k", "first", "x"]
        assert sent[5][3:] == ["ADD", "phonebook", "k", "phone2", "2"]
        # Another Client: its own id, its own count from 1.
        assert c2.execute("ADD", "phonebook", "k", "phone", 1) == 7
        assert (i2, 1, "ADD") in fc.seqs() and len(fc.seqs()) == 6
    finally:
        c1.close()
        c2.close()


def test_fake_stale_is_raised_at_once(fakes):
    fc = fakes(data=lambda i, args: err("ERR stale request: client 1 already wrote a "
                                        "later sequence number than 1"))
    with keel.Client(*fc.coords[0].addr, retry_timeout=5) as c:
        t0 = time.monotonic()
        with pytest.raises(keel.KeelError) as ei:
            c.atomic_add("phonebook", "k", {"phone": 1})
        assert ei.value.code == "ERR" and ei.value.message.startswith("stale request")
        assert time.monotonic() - t0 < 1
        assert fc.count("ADD") == 1


def test_fake_add_retried_after_a_timeout(fakes):
    """No reply within the timeout: the ADD may have been applied; it is
    sent again with the same pair (to the other daemon first)."""
    def data(i, args):
        if i == 0:
            time.sleep(0.5)  # longer than the Client's timeout
        return success(args)

    fc = fakes(data=data)
    with keel.Client(*fc.daemons[0].addr, timeout=0.2, retry_timeout=5) as c:
        c.mode
        t0 = time.monotonic()
        assert c.atomic_add("phonebook", "k", {"phone": 1}) == {"phone": 7}
        assert time.monotonic() - t0 < 2
        assert fc.daemons[0].seqs() == [(c.client_id, 1, "ADD")]
        assert fc.daemons[1].seqs() == [(c.client_id, 1, "ADD")]
        assert c.put("phonebook", "k", {"first": "x"}) is True
        assert fc.daemons[1].seqs()[-1] == (c.client_id, 2, "PUT")


def test_fake_writes_of_threads_sharing_a_client_do_not_overlap(fakes):
    """Thread 1's ADD fails with "may or may not" and waits to retry; thread
    2's PUT through the same Client waits for it, so the daemons never see
    client_seq 2 before the last retry of client_seq 1 (which they would
    then refuse as stale). Reads do not wait."""
    state = {"n": 0}
    lock = threading.Lock()

    def data(i, args):
        with lock:
            state["n"] += 1
            n = state["n"]
        if n == 1:
            time.sleep(0.2)
            return err("TRYAGAIN the partition's primary changed; the write may or may "
                       "not have been applied")
        return success(args)

    fc = fakes(ndaemons=1, data=data)
    with keel.Client(*fc.coords[0].addr, retry_timeout=5) as c:
        c.mode
        results = {}
        t1 = threading.Thread(target=lambda: results.setdefault(
            "add", c.atomic_add("phonebook", "k", {"phone": 1})))
        t2 = threading.Thread(target=lambda: results.setdefault(
            "put", c.put("phonebook", "k", {"first": "x"})))
        t1.start()
        time.sleep(0.05)
        t2.start()
        t1.join(timeout=10)
        t2.join(timeout=10)
        assert results == {"add": {"phone": 7}, "put": True}
        i = c.client_id
        assert fc.seqs() == [(i, 1, "ADD"), (i, 1, "ADD"), (i, 2, "PUT")]


def test_fake_add_moves_on_when_its_daemon_is_gone(fakes):
    """A Client given daemon 0: once daemon 0 is gone, the ADD is refused
    before it is sent, so it is safe to send it to daemon 1, once."""
    fc = fakes(data=lambda i, args: success(args))
    with keel.Client(*fc.daemons[0].addr, retry_timeout=5) as c:
        assert c.mode == "daemon"
        assert c.get("phonebook", "k")["phone"] == 1
        assert fc.daemons[0].count("GET") == 1 and fc.daemons[1].count("GET") == 0
        fc.daemons[0].stop()
        t0 = time.monotonic()
        assert c.atomic_add("phonebook", "k", {"phone": 1}) == {"phone": 7}
        assert time.monotonic() - t0 < 2
        assert fc.daemons[0].count("ADD") == 0 and fc.daemons[1].count("ADD") == 1
        # It stays on daemon 1 (daemon 0 is still listed ONLINE by the
        # coordinator but is avoided after failing).
        assert c.get("phonebook", "k")["phone"] == 1
        assert fc.daemons[1].count("GET") == 1


def test_fake_connection_refused_for_an_unsent_add_everywhere(fakes):
    """Every daemon gone: unsent attempts are retried until the bound, then
    CONNECTION with .unsent is raised."""
    fc = fakes(data=lambda i, args: success(args))
    c = keel.Client(*fc.coords[0].addr, retry_timeout=0.5)
    assert c.get("phonebook", "k")["phone"] == 1
    for d in fc.daemons:
        d.stop()
    t0 = time.monotonic()
    with pytest.raises(keel.KeelError) as ei:
        c.atomic_add("phonebook", "k", {"phone": 1})
    took = time.monotonic() - t0
    assert ei.value.code == "CONNECTION" and ei.value.unsent
    assert 0.4 < took < 2.0
    c.close()


def test_fake_waits_for_a_daemon_to_come_online(fakes):
    fc = fakes(data=lambda i, args: success(args))
    fc.online = set()
    with keel.Client(*fc.coords[0].addr, retry_timeout=0.3) as c:
        with pytest.raises(keel.KeelError) as ei:
            c.get("phonebook", "k")
        assert ei.value.code == "CONNECTION" and ei.value.unsent
        assert "no ONLINE daemon" in ei.value.message
    with keel.Client(*fc.coords[0].addr, retry_timeout=5) as c:
        timer = threading.Timer(0.3, lambda: fc.online.add(1))
        timer.start()
        t0 = time.monotonic()
        assert c.get("phonebook", "k")["phone"] == 1
        assert 0.25 < time.monotonic() - t0 < 2
        timer.join()
        assert fc.daemons[0].count("GET") == 0 and fc.daemons[1].count("GET") == 1


def test_fake_unavailable_is_raised_at_once(fakes):
    unavailable = err("UNAVAILABLE partition 3 of phonebook has no live replica")
    fc = fakes(data=lambda i, args: unavailable)
    with keel.Client(*fc.coords[0].addr, retry_timeout=10) as c:
        t0 = time.monotonic()
        with pytest.raises(keel.KeelError) as ei:
            c.get("phonebook", "k")
        assert ei.value.code == "UNAVAILABLE"
        assert time.monotonic() - t0 < 1
        assert fc.count("GET") == 1


def test_fake_retries_are_bounded_with_backoff(fakes):
    fc = fakes(data=lambda i, args: err("TRYAGAIN this partition is changing primary"))
    with keel.Client(*fc.coords[0].addr, retry_timeout=1.0) as c:
        c.mode  # learn the cluster first, so that only the call is timed
        status_before = fc.coords[0].count("CLUSTER.STATUS")
        t0 = time.monotonic()
        with pytest.raises(keel.KeelError) as ei:
            c.get("phonebook", "k")
        took = time.monotonic() - t0
        assert ei.value.code == "TRYAGAIN"
        assert 0.9 < took < 1.8
        gets = fc.count("GET")
        # Two daemons tried at once, then waits of 50, 100, 200, 400 ms
        # (and what is left): far fewer attempts than a busy loop.
        assert 4 <= gets <= 12, gets
        # The daemon list is refreshed from the coordinator between attempts.
        assert fc.coords[0].count("CLUSTER.STATUS") - status_before >= gets - 1
    with keel.Client(*fc.coords[0].addr, retry_timeout=0) as c:
        c.mode
        before = fc.count("GET")
        with pytest.raises(keel.KeelError):
            c.get("phonebook", "k")
        assert fc.count("GET") - before == 1  # retry_timeout=0: no retries


def test_fake_stale_nospace_is_retried_only_if_the_space_exists(fakes):
    state = {"n": 0}

    def data(i, args):
        state["n"] += 1
        if args[1] != "phonebook" or state["n"] <= 2:
            return err("NOSPACE no such space '%s'" % args[1])
        return success(args)

    fc = fakes(data=data)
    with keel.Client(*fc.coords[0].addr, retry_timeout=5) as c:
        assert c.atomic_add("phonebook", "k", {"phone": 1}) == {"phone": 7}
        assert fc.count("ADD") == 3
        t0 = time.monotonic()
        with pytest.raises(keel.KeelError) as ei:
            c.get("other", "k")
        assert ei.value.code == "NOSPACE"
        assert time.monotonic() - t0 < 1
        assert fc.count("GET") == 1


def test_fake_admin_follows_the_leader_and_fails_over(fakes):
    named = {"leader": 1}  # the leader the followers name

    def coord(i, args):
        if args[0].upper() == "SPACE.LIST":
            if i == fc.leader:
                return b"*1\r\n" + bulk("phonebook")
            return err("TRYAGAIN leader is %s" % fc.coords[named["leader"]].text)
        return err("ERR unknown command '%s'" % args[0])

    fc = fakes(ncoords=3, coord_handler=coord)
    fc.leader = 1
    with keel.Admin(*fc.coords[0].addr, retry_timeout=5) as a:
        assert a.list_spaces() == ["phonebook"]
        # CLUSTER.STATUS named the leader: admin calls go straight to it.
        assert [s.count("SPACE.LIST") for s in fc.coords] == [0, 1, 0]
        # The leader dies and coordinator 2 takes over, but coordinator 0
        # still names the dead one: the client must not loop between them.
        fc.coords[1].stop()
        fc.leader = 2
        t0 = time.monotonic()
        assert a.list_spaces() == ["phonebook"]
        assert time.monotonic() - t0 < 2
        assert fc.coords[2].count("SPACE.LIST") == 1
        # A follower naming the leader is followed at once: a new Admin
        # learns that 0 leads, then 0 loses the lead and names 2.
        named["leader"] = 2
        fc.leader = 0
        a2 = keel.Admin(*fc.coords[0].addr, retry_timeout=5)
        a2.mode
        fc.leader = 2
        before = [fc.coords[i].count("SPACE.LIST") for i in (0, 2)]
        t0 = time.monotonic()
        assert a2.list_spaces() == ["phonebook"]
        assert time.monotonic() - t0 < 0.5  # no wait before following
        after = [fc.coords[i].count("SPACE.LIST") for i in (0, 2)]
        assert [y - x for x, y in zip(before, after)] == [1, 1]
        a2.close()
        # An error that is not about failover is raised as it is.
        with pytest.raises(keel.KeelError) as ei:
            a.execute("NOPE")
        assert ei.value.code == "ERR"
        assert fc.coords[2].count("NOPE") == 1


def test_fake_admin_given_a_daemon_asks_its_coordinator(fakes):
    def coord(i, args):
        if args[0].upper() == "SPACE.LIST":
            return b"*1\r\n" + bulk("phonebook")
        return err("ERR unknown command")

    fc = fakes(ncoords=2, coord_handler=coord)
    with keel.Admin(*fc.daemons[1].addr) as a:
        assert a.mode == "daemon"
        assert a.list_spaces() == ["phonebook"]
        assert a.describe_space("phonebook") == DESC
        assert fc.coords[0].count("SPACE.LIST") == 1
        assert all(d.count("SPACE.LIST") == 0 and d.count("SPACE.DESCRIBE") == 0
                   for d in fc.daemons)
        assert fc.daemons[1].count("INFO") >= 2  # INFO server, then INFO lease


def test_fake_daemon_given_without_coordinators_fails_cleanly(fakes):
    """A daemon that names no coordinator: admin calls raise CONNECTION
    saying so; data calls still go to the daemon."""
    fc = fakes(data=lambda i, args: success(args))
    srv = FakeServer(lambda args: bulk("# Server\r\nmode:daemon\r\n") if args[0] == "INFO"
                     else fc.data(0, unseq(args)))
    try:
        with keel.Client(*srv.addr) as c:
            assert c.put("phonebook", "k", {"first": "x"}) is True
            with pytest.raises(keel.KeelError) as ei:
                c.get("phonebook", "k")  # needs the schema from a coordinator
            assert ei.value.code == "CONNECTION"
            assert "coordinator" in ei.value.message
    finally:
        srv.stop()


def test_fake_standalone_is_never_retried():
    calls = []

    def handle(args):
        calls.append(args)
        if args[0] == "INFO":
            return bulk("# Server\r\nmode:standalone\r\n")
        return err("TRYAGAIN whatever")

    srv = FakeServer(handle)
    try:
        with keel.Client(*srv.addr, retry_timeout=5) as c:
            assert c.mode == "standalone"
            with pytest.raises(keel.KeelError) as ei:
                c.put("phonebook", "k", {"first": "x"})
            assert ei.value.code == "TRYAGAIN"
            assert [a[0] for a in calls] == ["INFO", "PUT"]
    finally:
        srv.stop()
    # A server whose INFO is an error (or says nothing of a mode) is treated
    # as standalone.
    srv = FakeServer(lambda args: err("ERR unknown command") if args[0] == "INFO" else OK)
    try:
        with keel.Client(*srv.addr) as c:
            assert c.mode == "standalone"
            assert c.put("phonebook", "k", {"first": "x"}) is True
    finally:
        srv.stop()
