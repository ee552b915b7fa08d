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
  out of the test. The module
  ends by stopping keel local with SIGINT (exit 0 expected); teardown kills
  it and its children by pid if needed.

- Scripted fakes (small RESP servers in this process that play coordinators
  and daemons): the retry rules exactly — ADD and CPUT are re-sent only after
  an error that says they were not applied, PUT and GET after any
  failover error, UNAVAILABLE is raised at once, retries stop at
  retry_timeout, admin calls follow "TRYAGAIN leader is host:port" and fail
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A ready 3+3 keel local with the phonebook space (tolerate 1 failures)
    created through keel.Admin on the first coordinator."""
    p, q = pick_ports(3, 3)
    lc = LocalCluster(tmp_path_factory.mktemp("keel-local") / "cluster", p, q)
    try:
        lc.wait_line(r"keel local: ready: cluster [0-9a-f]+ with 3 coordinators and 3 daemons",
                     READY_TIMEOUT)
        with keel.Admin(*lc.coordinator(0)) as a:
            assert a.mode == "coordinator"
            assert a.add_space(PHONEBOOK_T1) is True
            assert a.list_spaces() == ["phonebook"]
        yield lc
        rc = lc.stop()
        assert rc == 0, "keel local exited %s on SIGINT; output:\n%s" % (rc, lc.text())
    finally:
        lc.kill_all()


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
        with self.lock:
            return sum(1 for a in self.requests if a[0].upper() == cmd)

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
            return self.data(i, args)
        return handle

    def count(self, cmd):
        return sum(s.count(cmd) for s in self.daemons)

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
    fc = fakes(data=scripted(first, success))
    with keel.Client(*fc.coords[0].addr, retry_timeout=5) as c:
        assert c.mode == "coordinator"
        once = cmd in ("ADD", "CPUT")
        if once and first not in NOT_APPLIED:
            # Maybe applied: not re-sent; the caller gets the error.
            with pytest.raises(keel.KeelError) as ei:
                CALLS[cmd](c)
            if first is CLOSE:
                assert ei.value.code == "CONNECTION" and not ei.value.unsent
            else:
                assert ei.value.code == "TRYAGAIN"
            assert fc.count(cmd) == 1
        else:
            assert CALLS[cmd](c)
            assert fc.count(cmd) == 2
        # No data command reaches a coordinator, no admin one a daemon.
        assert fc.coords[0].count(cmd) == 0
        assert all(s.count("SPACE.DESCRIBE") == 0 for s in fc.daemons)


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
                     else fc.data(0, args))
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
