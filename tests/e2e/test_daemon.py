"""`keel daemon` against a fake coordinator.

FakeCoord is a small RESP server written here that answers the daemon's side
of docs/coordinator.md (DAEMON.REGISTER, DAEMON.HEARTBEAT, DAEMON.SHUTDOWN,
CLUSTER.MAP) and records every request with its arrival time. Switches make it
refuse registrations, redirect with `-TRYAGAIN leader is host:port`, answer
`-TRYAGAIN` without an address, go silent (read, never answer), answer a
heartbeat with `-ERR daemon N is OFFLINE: register again`, or die. Heartbeat
and ping timeout are small (50 ms / 500 ms) so leases come and go quickly.

Covered: the identity file is created on the first registration and reused
on restart; refusals and a corrupt identity exit 1 with the message; a
coordinator that is down at start is retried until it comes up; redirects are
followed and a dead or leaderless coordinator is left for the next one; the
lease is held while heartbeats are answered, lost after ping_timeout of
silence and regained; OFFLINE makes the daemon register again under its id;
SIGTERM/SIGINT/SIGHUP send DAEMON.SHUTDOWN and exit 0 (also when nobody
answers, within the bound); the map is fetched when the heartbeat announces a
newer version (bytes produced by the real cmap_encode, via a tiny C helper
compiled from src/), and malformed or foreign maps are ignored, while the
coordinators a map lists become failover targets; data commands on a map
without spaces answer -NOSPACE. Bad answers: a malformed REGISTER reply is retried, a rejoin
answered with another id exits 1, a malformed heartbeat reply counts as a
failed heartbeat, "already online" after OFFLINE resumes heartbeats, and an
identity that cannot be written exits 1.

Every wait is bounded; every process started here is stopped in teardown by
its pid (SIGTERM, then SIGKILL).
"""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import (HOST, KEEL_BIN, REPO, SANITIZER_MARKS, Err, RawConn, Simple, free_port,
                      ping_once, wait_for)

CLUSTER = 0x9F2C00000000ABCD
CLUSTER_HEX = "%016x" % CLUSTER
HB_MS = 50
PING_MS = 500
START_TIMEOUT = 10.0
EXIT_TIMEOUT = 10.0


# -- the fake coordinator ------------------------------------------------------

def parse_request(buf):
    """One multibulk request from buf: (list of str, bytes used) or None."""
    if not buf.startswith(b"*"):
        if buf:
            raise ValueError("not a multibulk request: %r" % buf[:20])
        return None
    i = buf.find(b"\r\n")
    if i < 0:
        return None
    n = int(buf[1:i])
    pos = i + 2
    args = []
    for _ in range(n):
        j = buf.find(b"\r\n", pos)
        if j < 0:
            return None
        assert buf[pos:pos + 1] == b"$", buf[pos:pos + 10]
        ln = int(buf[pos + 1:j])
        pos = j + 2
        if len(buf) < pos + ln + 2:
            return None
        args.append(buf[pos:pos + ln].decode())
        pos += ln + 2
    return args, pos


def bulk(b):
    if isinstance(b, str):
        b = b.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


class FakeCoord:
    """A coordinator stand-in on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port=0, cluster_id=CLUSTER):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, port))
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.addr = "%s:%d" % (HOST, self.port)
        self.lock = threading.Lock()
        self.requests = []      # (monotonic time, [command, args...])
        self.answered_hb = []   # monotonic times of answered heartbeats
        self.cluster_hex = "%016x" % cluster_id
        self.hb_ms = HB_MS
        self.ping_ms = PING_MS
        self.coordinators = [self.addr]
        self.next_id = 1
        self.map_version = 0
        self.map_bytes = b""
        # switches
        self.silent = False           # read requests, answer nothing
        self.redirect = None          # "host:port": -TRYAGAIN leader is ... to everything
        self.redirect_only = None     # or only to these commands
        self.tryagain = False         # -TRYAGAIN no leader yet, to everything
        self.register_error = None    # an error line for DAEMON.REGISTER
        self.sync_seen = []           # the SYNC policy each DAEMON.REGISTER carried
        self.offline_heartbeats = 0   # answer this many heartbeats with OFFLINE
        self.raw = {}                 # command -> reply bytes sent instead of the real one
        self.closed = False
        self.conns = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    # the daemon's commands

    def _handle(self, args):
        cmd = args[0].upper()
        if self.silent:
            return None
        if self.redirect and (self.redirect_only is None or cmd in self.redirect_only):
            return b"-TRYAGAIN leader is %s\r\n" % self.redirect.encode()
        if self.tryagain:
            return b"-TRYAGAIN no leader yet (election in progress)\r\n"
        if cmd in self.raw:
            return self.raw[cmd]
        if cmd == "DAEMON.REGISTER":
            if self.register_error:
                return b"-%s\r\n" % self.register_error.encode()
            if len(args) == 6:
                if args[5] != self.cluster_hex:
                    return (b"-ERR data directory belongs to cluster %s, this is cluster %s\r\n"
                            % (args[5].encode(), self.cluster_hex.encode()))
                did = int(args[4])
            elif len(args) == 4:
                did = self.next_id
                self.next_id += 1
            else:
                return b"-ERR wrong number of arguments for 'DAEMON.REGISTER'\r\n"
            out = b"*5\r\n:%d\r\n%s:%d\r\n:%d\r\n*%d\r\n" % (
                did, bulk(self.cluster_hex), self.hb_ms, self.ping_ms, len(self.coordinators))
            return out + b"".join(bulk(a) for a in self.coordinators)
        if cmd == "DAEMON.HEARTBEAT":
            if self.offline_heartbeats > 0:
                self.offline_heartbeats -= 1
                return b"-ERR daemon %s is OFFLINE: register again\r\n" % args[1].encode()
            self.answered_hb.append(time.monotonic())
            return b"*3\r\n:%d\r\n:%d\r\n:%d\r\n" % (self.map_version, self.hb_ms, self.ping_ms)
        if cmd == "CLUSTER.MAP":
            return bulk(self.map_bytes)
        if cmd == "DAEMON.SHUTDOWN":
            return b"+OK\r\n"
        return b"-ERR unknown command '%s'\r\n" % args[0].encode()

    # plumbing

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(0.1)
            with self.lock:
                self.conns.append(c)
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c):
        buf = b""
        while not self.closed:
            try:
                chunk = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                c.close()
                return
            buf += chunk
            while True:
                r = parse_request(buf)
                if r is None:
                    break
                args, used = r
                buf = buf[used:]
                if (args[0].upper() == "DAEMON.REGISTER" and len(args) >= 3
                        and args[-2] == "SYNC"):
                    # the daemon's durability policy, checked against a
                    # cluster requirement by real coordinators
                    self.sync_seen.append(args[-1])
                    args = args[:-2]
                with self.lock:
                    self.requests.append((time.monotonic(), args))
                    reply = self._handle(args)
                if reply is not None:
                    try:
                        c.sendall(reply)
                    except OSError:
                        return

    def set(self, **kw):
        with self.lock:
            for k, v in kw.items():
                assert hasattr(self, k), k
                setattr(self, k, v)

    def seen(self, cmd):
        """Argument lists of every request named cmd, in arrival order."""
        with self.lock:
            return [a[1:] for _, a in self.requests if a[0].upper() == cmd]

    def count(self, cmd, since=0.0):
        with self.lock:
            return sum(1 for t, a in self.requests if a[0].upper() == cmd and t >= since)

    def stop(self):
        """Dies: closes the listener and every connection."""
        self.closed = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
        for t in self.threads:
            t.join(timeout=2)


# -- the daemon process ---------------------------------------------------------

def daemon_port():
    """A free port whose default peer port (port + 10000) is a port too."""
    for _ in range(200):
        p = free_port()
        if p + 10000 <= 65535:
            return p
    raise AssertionError("no free port below 55536")


class Daemon:
    def __init__(self, tmp_path, coord_port, name="d1"):
        self.tmp = tmp_path
        self.name = name
        self.port = daemon_port()
        self.coord_port = coord_port
        self.data = str(tmp_path / (name + "-data"))
        self.proc = None
        self.logs = []

    def argv(self):
        return [KEEL_BIN, "daemon", "-f", "--listen=" + HOST, "--listen-port=%d" % self.port,
                "--coordinator=" + HOST, "--coordinator-port=%d" % self.coord_port,
                "--data=" + self.data]

    def start(self, wait_serving=True):
        assert self.proc is None or self.proc.poll() is not None
        path = str(self.tmp / ("%s-%d.log" % (self.name, len(self.logs) + 1)))
        self.logs.append(path)
        with open(path, "wb") as f:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=f,
                                         stderr=subprocess.STDOUT)
        if wait_serving:
            ok = wait_for(lambda: self.proc.poll() is not None or ping_once(HOST, self.port),
                          START_TIMEOUT)
            assert ok and self.proc.poll() is None, "daemon did not start:\n" + self.log()
        return self

    def log(self, index=-1):
        try:
            with open(self.logs[index], "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, IndexError):
            return ""

    def cmd(self, *args):
        c = RawConn(HOST, self.port, timeout=5)
        try:
            return c.cmd(*args)
        finally:
            c.close()

    def info(self):
        text = self.cmd("INFO").decode()
        out = {}
        for line in text.split("\r\n"):
            if line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def wait_info(self, key, value, timeout=5.0):
        last = {}

        def check():
            last.update(self.info())
            return last.get(key) == value
        assert wait_for(check, timeout, interval=0.02), \
            "INFO %s never became %r (last %r); log:\n%s" % (key, value, last.get(key), self.log())

    def wait_exit(self, timeout=EXIT_TIMEOUT):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_TIMEOUT)
            raise AssertionError("daemon did not exit within %ss; log:\n%s"
                                 % (timeout, self.log()))

    def signal(self, sig=signal.SIGTERM, timeout=EXIT_TIMEOUT):
        self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def teardown(self):
        problems = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=EXIT_TIMEOUT)
                if rc != 0:
                    problems.append("%s: exit %s on SIGTERM at teardown" % (self.name, rc))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=EXIT_TIMEOUT)
                problems.append("%s: did not exit on SIGTERM" % self.name)
        for i, p in enumerate(self.logs):
            text = self.log(i)
            if any(m in text for m in SANITIZER_MARKS):
                problems.append("sanitizer report in " + p)
        return problems


class Env:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.fakes = []
        self.daemons = []

    def fake(self, **kw):
        f = FakeCoord(**kw)
        self.fakes.append(f)
        return f

    def daemon(self, coord_port, name="d1"):
        d = Daemon(self.tmp, coord_port, name)
        self.daemons.append(d)
        return d


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    try:
        yield e
    finally:
        problems = []
        for d in e.daemons:
            problems += d.teardown()
        for f in e.fakes:
            f.stop()
    if problems:
        pytest.fail("; ".join(problems) + "\n" +
                    "\n".join(d.log(i) for d in e.daemons for i in range(len(d.logs))),
                    pytrace=False)


def read_identity(d):
    with open(os.path.join(d.data, "identity")) as f:
        return f.read()


def running(env):
    """A fake coordinator and a daemon registered with it, holding its lease."""
    f = env.fake()
    d = env.daemon(f.port).start()
    d.wait_info("lease_valid", "1")
    return f, d


# -- registration and identity ----------------------------------------------------

def test_register_creates_identity_and_serves(env):
    f, d = running(env)
    assert read_identity(d) == "cluster_id=%s\ndaemon_id=1\n" % CLUSTER_HEX
    assert f.seen("DAEMON.REGISTER") == [[HOST, str(d.port), str(d.port + 10000)]]
    assert f.sync_seen == ["batch"]  # the default --sync
    info = d.info()
    assert info["mode"] == "daemon"
    assert info["daemon_id"] == "1"
    assert info["cluster_id"] == CLUSTER_HEX
    assert info["tcp_port"] == str(d.port)
    assert info["process_id"] == str(d.proc.pid)
    assert info["coordinator"] == f.addr
    assert info["state"] == "running"
    assert int(info["heartbeats_ok"]) > 0
    assert 0 < int(info["lease_ms_left"]) <= PING_MS
    assert info["heartbeat_ms"] == str(HB_MS) and info["ping_timeout_ms"] == str(PING_MS)
    assert info["map_version"] == "0" and info["spaces"] == "0"
    assert "event=daemon_registered daemon=1 cluster=%s" % CLUSTER_HEX in d.log()
    assert "event=lease_acquired daemon=1" in d.log()
    # heartbeats every ~50 ms, each naming the daemon and reporting its
    # re-protection work (none: it holds no partition)
    t0 = time.monotonic()
    time.sleep(1.0)
    n = f.count("DAEMON.HEARTBEAT", since=t0)
    assert 8 <= n <= 30, n
    assert all(a == ["1", "PROGRESS", "0", "0", "0", "0"] for a in f.seen("DAEMON.HEARTBEAT"))


def test_client_port_commands(env):
    f, d = running(env)
    for cmd in (("PUT", "kv", "k", "v", "1"), ("GET", "kv", "k"), ("DEL", "kv", "k"),
                ("CPUT", "kv", "k", "IF", "v", "1", "SET", "v", "2"), ("ADD", "kv", "k", "n", "1"),
                ("SEARCH", "kv"), ("COUNT", "kv"), ("get", "kv", "k")):
        r = d.cmd(*cmd)
        # The fake coordinator's map has no spaces: data commands name the
        # missing space (serving data is tested with a real cluster).
        if cmd[0] in ("SEARCH", "COUNT"):
            assert isinstance(r, Err) and r.code in ("ERR", "NOSPACE"), (cmd, r)
        else:
            assert isinstance(r, Err) and r.code == "NOSPACE", (cmd, r)
    assert d.cmd("PING") == Simple("PONG")
    assert d.cmd("PING", "hi") == b"hi"
    assert d.cmd("ECHO", "x y") == b"x y"
    r = d.cmd("CLUSTER.MAP")
    assert isinstance(r, Err) and r.code == "TRYAGAIN", r  # map version 0: nothing fetched
    r = d.cmd("SPACE.ADD", "space kv key k")
    assert isinstance(r, Err) and "coordinator" in r, r
    r = d.cmd("NOSUCH")
    assert r == Err("ERR unknown command 'NOSUCH'")
    r = d.cmd("ECHO")
    assert isinstance(r, Err) and "wrong number of arguments" in r
    lease = d.cmd("INFO", "lease").decode()
    assert lease.startswith("# Lease\r\n") and "# Server" not in lease
    c = RawConn(HOST, d.port)
    assert c.cmd("QUIT") == "OK"
    assert c.is_closed(timeout=5)
    c.close()
    # a data command on a space the daemon does not know makes it ask the
    # coordinator for a fresh map (the space may be new), at most once at a
    # time per request burst
    assert 1 <= f.count("CLUSTER.MAP") <= 8


def test_identity_reused_after_restart(env):
    f, d = running(env)
    assert d.signal(signal.SIGTERM) == 0
    assert f.seen("DAEMON.SHUTDOWN") == [["1"]]
    assert "event=daemon_shutdown daemon=1" in d.log()
    d.start()
    d.wait_info("lease_valid", "1")
    regs = f.seen("DAEMON.REGISTER")
    assert len(regs) == 2
    assert regs[1] == [HOST, str(d.port), str(d.port + 10000), "1", CLUSTER_HEX]
    assert f.next_id == 2  # no new id was handed out
    assert d.info()["daemon_id"] == "1"
    assert "event=daemon_rejoined daemon=1" in d.log()
    assert read_identity(d) == "cluster_id=%s\ndaemon_id=1\n" % CLUSTER_HEX


@pytest.mark.parametrize("error", [
    "ERR daemon 7 is RETIRED",
    "ERR daemon 7 is already online",
    "ERR unknown daemon 7",
])
def test_refusal_exits_1_with_message(env, error):
    f = env.fake()
    f.set(register_error=error)
    d = env.daemon(f.port)
    d.start(wait_serving=False)
    assert d.wait_exit() == 1
    assert error in d.log()
    assert "event=register_refused" in d.log()
    assert not os.path.exists(os.path.join(d.data, "identity"))


def test_other_cluster_refused(env):
    f = env.fake()
    d = env.daemon(f.port)
    os.makedirs(d.data)
    with open(os.path.join(d.data, "identity"), "w") as fh:
        fh.write("cluster_id=00000000000000aa\ndaemon_id=5\n")
    d.start(wait_serving=False)
    assert d.wait_exit() == 1
    assert f.seen("DAEMON.REGISTER") == [[HOST, str(d.port), str(d.port + 10000), "5",
                                          "00000000000000aa"]]
    assert ("ERR data directory belongs to cluster 00000000000000aa, this is cluster %s"
            % CLUSTER_HEX) in d.log()
    assert read_identity(d) == "cluster_id=00000000000000aa\ndaemon_id=5\n"  # untouched


def test_corrupt_identity_exits_1(env):
    f = env.fake()
    d = env.daemon(f.port)
    os.makedirs(d.data)
    with open(os.path.join(d.data, "identity"), "w") as fh:
        fh.write("cluster_id=xyz\n")
    d.start(wait_serving=False)
    assert d.wait_exit() == 1
    assert "identity is corrupt: line 1: cluster_id must be 16 hex digits" in d.log()
    assert f.seen("DAEMON.REGISTER") == []


def test_data_dir_in_use(env):
    f, d = running(env)
    d2 = env.daemon(f.port, name="d2")
    d2.data = d.data
    d2.start(wait_serving=False)
    assert d2.wait_exit() == 1
    assert "is in use by another keel process" in d2.log()


def test_usage_errors_exit_2(tmp_path):
    for args in (["--listen-port=0"], ["--coordinator=localhost"], ["--bogus"], ["extra"],
                 ["-p", "60000"], ["--peer-port=2012"]):
        r = subprocess.run([KEEL_BIN, "daemon", "-f", "-D", str(tmp_path / "x")] + args,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=EXIT_TIMEOUT)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr, args
    assert not os.path.exists(tmp_path / "x")


def test_coordinator_down_at_start(env):
    port = free_port()
    d = env.daemon(port).start()
    assert wait_for(lambda: d.log().count("event=register_failed") >= 3, 5.0), d.log()
    info = d.info()
    assert info["state"] == "registering" and info["lease_valid"] == "0"
    assert d.proc.poll() is None
    f = env.fake(port=port)
    d.wait_info("lease_valid", "1", timeout=10)
    assert d.info()["daemon_id"] == "1"
    assert read_identity(d) == "cluster_id=%s\ndaemon_id=1\n" % CLUSTER_HEX
    assert len(f.seen("DAEMON.REGISTER")) == 1


# -- coordinator failover ---------------------------------------------------------

def two_fakes(env):
    a, b = env.fake(), env.fake()
    for f in (a, b):
        f.set(coordinators=[a.addr, b.addr])
    return a, b


def test_redirects_followed(env):
    a, b = two_fakes(env)
    a.set(redirect=b.addr)  # a is a follower that knows the leader
    d = env.daemon(a.port).start()
    d.wait_info("lease_valid", "1")
    assert d.info()["coordinator"] == b.addr
    assert len(a.seen("DAEMON.REGISTER")) == 1  # answered with the redirect
    assert len(b.seen("DAEMON.REGISTER")) == 1
    assert b.count("DAEMON.HEARTBEAT") > 0
    assert a.count("DAEMON.HEARTBEAT") == 0
    # leadership moves to a: b redirects, the daemon follows at once
    a.set(redirect=None)
    b.set(redirect=a.addr)
    d.wait_info("coordinator", a.addr)
    t0 = time.monotonic()
    time.sleep(0.3)
    assert a.count("DAEMON.HEARTBEAT", since=t0) >= 3
    assert d.info()["lease_valid"] == "1"


def test_failover_when_coordinator_dies(env):
    a, b = two_fakes(env)
    d = env.daemon(a.port).start()
    d.wait_info("lease_valid", "1")
    assert d.info()["coordinator"] == a.addr
    a.stop()
    d.wait_info("coordinator", b.addr)
    t0 = time.monotonic()
    assert wait_for(lambda: b.count("DAEMON.HEARTBEAT", since=t0) >= 3, 5.0)
    d.wait_info("lease_valid", "1")


def test_failover_on_tryagain_without_leader(env):
    a, b = two_fakes(env)
    d = env.daemon(a.port).start()
    d.wait_info("lease_valid", "1")
    a.set(tryagain=True)
    d.wait_info("coordinator", b.addr)
    t0 = time.monotonic()
    assert wait_for(lambda: b.count("DAEMON.HEARTBEAT", since=t0) >= 3, 5.0)
    assert int(d.info()["heartbeats_failed"]) >= 1


# -- the lease ---------------------------------------------------------------------

def test_lease_lost_after_silence_and_regained(env):
    f, d = running(env)
    f.set(silent=True)
    t_silent = time.monotonic()
    last_valid = None
    lost_at = None
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        t = time.monotonic()
        if d.info()["lease_valid"] == "1":
            last_valid = t
        else:
            lost_at = time.monotonic()
            break
        time.sleep(0.01)
    assert lost_at is not None, "lease still valid 5 s after the coordinator went silent"
    last_answer = f.answered_hb[-1]
    assert last_answer <= t_silent + 0.05
    # the lease ran from a send before the last answer: it ends at most
    # ping_timeout after that answer (slack for scheduling)...
    assert lost_at - last_answer <= PING_MS / 1000 + 0.5, lost_at - last_answer
    # ...and not much earlier than ping_timeout minus one request timeout
    assert last_valid is not None and last_valid - last_answer >= (PING_MS - 200) / 1000
    assert "event=lease_lost daemon=1" in d.log()
    assert " ERROR event=lease_lost" in d.log()
    info = d.info()
    assert info["lease_ms_left"] == "0"
    assert int(info["heartbeats_failed"]) >= 1
    # at most one heartbeat in flight: a silent coordinator sees far fewer than
    # one per heartbeat interval (each waits out its timeout)
    t0 = time.monotonic()
    time.sleep(1.0)
    n = f.count("DAEMON.HEARTBEAT", since=t0)
    assert n <= 12, n
    assert d.proc.poll() is None  # it keeps running and retrying
    f.set(silent=False)
    d.wait_info("lease_valid", "1")
    assert d.log().count("event=lease_acquired") == 2


def test_offline_means_register_again(env):
    f, d = running(env)
    f.set(offline_heartbeats=1)
    assert wait_for(lambda: len(f.seen("DAEMON.REGISTER")) == 2, 5.0), d.log()
    assert f.seen("DAEMON.REGISTER")[1][3:] == ["1", CLUSTER_HEX]
    assert wait_for(lambda: "event=daemon_rejoined daemon=1" in d.log(), 5.0), d.log()
    log = d.log()
    assert "event=daemon_offline daemon=1" in log
    assert log.index("event=lease_lost") < log.index("event=daemon_rejoined")
    d.wait_info("lease_valid", "1")
    assert d.info()["daemon_id"] == "1"
    assert read_identity(d) == "cluster_id=%s\ndaemon_id=1\n" % CLUSTER_HEX


def test_heartbeat_settings_follow_the_coordinator(env):
    f, d = running(env)
    f.set(hb_ms=200, ping_ms=2000)
    d.wait_info("heartbeat_ms", "200")
    assert d.info()["ping_timeout_ms"] == "2000"
    time.sleep(0.3)
    t0 = time.monotonic()
    time.sleep(1.0)
    n = f.count("DAEMON.HEARTBEAT", since=t0)
    assert 3 <= n <= 7, n
    assert int(d.info()["lease_ms_left"]) > PING_MS  # the longer ping timeout applies


# -- shutdown ------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_sends_shutdown_and_exits_0(env, sig):
    f, d = running(env)
    t0 = time.monotonic()
    assert d.signal(sig) == 0
    assert time.monotonic() - t0 < 2.0
    assert f.seen("DAEMON.SHUTDOWN") == [["1"]]
    assert "event=daemon_shutdown daemon=1" in d.log()
    assert not ping_once(HOST, d.port)


def test_shutdown_bounded_when_nobody_answers(env):
    f, d = running(env)
    f.set(silent=True)
    t0 = time.monotonic()
    assert d.signal(signal.SIGTERM) == 0
    took = time.monotonic() - t0
    assert took < 4.0, took
    assert len(f.seen("DAEMON.SHUTDOWN")) >= 1
    assert "event=shutdown_unconfirmed" in d.log()


def test_shutdown_follows_redirect(env):
    a, b = two_fakes(env)
    d = env.daemon(a.port).start()
    d.wait_info("lease_valid", "1")
    a.set(redirect=b.addr, redirect_only={"DAEMON.SHUTDOWN"})
    assert d.signal(signal.SIGTERM) == 0
    assert a.seen("DAEMON.SHUTDOWN") == [["1"]]
    assert b.seen("DAEMON.SHUTDOWN") == [["1"]]
    assert "recorded SHUTDOWN by %s" % b.addr in d.log()


def test_shutdown_while_registering(env):
    port = free_port()
    d = env.daemon(port).start()
    assert wait_for(lambda: "event=register_failed" in d.log(), 5.0)
    t0 = time.monotonic()
    assert d.signal(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 2.0


# -- the map -------------------------------------------------------------------------

MKMAP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cmap.h"
/* mkmap CLUSTER_HEX OUT [COORD_PORT...]: writes a bootstrapped map with one
 * daemon, one space and coordinators on 127.0.0.1 at the given client ports
 * to OUT (cmap_encode) and prints its version. */
int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    cmap *m = cmap_new();
    buf b;
    buf_init(&b);
    cmap_result res;
    const char *space = "space kv\nkey k\nattributes v\ncreate 4 partitions\ntolerate 0 failures\n";
    cmap_cmd_bootstrap(&b, strtoull(argv[1], NULL, 16), false);
    if (cmap_apply(m, b.data, b.len, &res)) return 1;
    buf_reset(&b);
    cmap_cmd_add_daemon(&b, "127.0.0.1", 2012, 12012, 1);
    if (cmap_apply(m, b.data, b.len, &res)) return 1;
    buf_reset(&b);
    cmap_cmd_add_space(&b, space, strlen(space));
    if (cmap_apply(m, b.data, b.len, &res)) { fprintf(stderr, "%s\n", res.msg); return 1; }
    for (int i = 3; i < argc; i++) {
        int port = atoi(argv[i]);
        buf_reset(&b);
        cmap_cmd_add_coordinator(&b, "127.0.0.1", (uint16_t)port, "127.0.0.1",
                                 (uint16_t)(port - 1));
        if (cmap_apply(m, b.data, b.len, &res)) { fprintf(stderr, "%s\n", res.msg); return 1; }
    }
    buf_reset(&b);
    cmap_encode(m, &b);
    FILE *f = fopen(argv[2], "wb");
    if (!f || fwrite(b.data, 1, b.len, f) != b.len || fclose(f)) return 1;
    printf("%llu\n", (unsigned long long)m->version);
    return 0;
}
"""


@pytest.fixture(scope="module")
def mkmap(tmp_path_factory):
    """Builds the helper from src/ (cmap, space, buf); returns make(cluster_hex) ->
    (version, bytes)."""
    d = tmp_path_factory.mktemp("mkmap")
    src = d / "mkmap.c"
    src.write_text(MKMAP_C)
    exe = str(d / "mkmap")
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-I" + os.path.join(REPO, "src"),
                        "-o", exe, str(src)] +
                       [os.path.join(REPO, "src", n) for n in ("cmap.c", "space.c", "buf.c")] +
                       ["-lxxhash"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()

    def make(cluster_hex, coord_ports=()):
        out = str(d / ("map-" + cluster_hex))
        r = subprocess.run([exe, cluster_hex, out] + [str(p) for p in coord_ports],
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        with open(out, "rb") as fh:
            return int(r.stdout), fh.read()
    return make


def test_map_fetched_when_newer(env, mkmap):
    version, data = mkmap(CLUSTER_HEX)
    assert struct.unpack(">QQ", data[1:17]) == (CLUSTER, version)  # after the format byte
    f, d = running(env)
    f.set(map_bytes=data, map_version=version)
    d.wait_info("map_version", str(version))
    info = d.info()
    assert info["spaces"] == "1" and info["daemons"] == "1"
    assert d.cmd("CLUSTER.MAP") == data
    assert d.cmd("CLUSTER.MAP", "STALE") == data
    assert f.seen("CLUSTER.MAP")[0] == ["STALE"]
    # fetched once: later heartbeats announce the same version
    time.sleep(0.3)
    assert len(f.seen("CLUSTER.MAP")) == 1


def test_bad_maps_ignored(env, mkmap):
    version, data = mkmap(CLUSTER_HEX)
    f, d = running(env)
    f.set(map_bytes=data, map_version=version)
    d.wait_info("map_version", str(version))
    n = len(f.seen("CLUSTER.MAP"))
    # a newer version announced, but the bytes are garbage: kept, logged
    f.set(map_bytes=b"garbage", map_version=version + 5)
    assert wait_for(lambda: "ignoring the map" in d.log(), 5.0), d.log()
    assert "does not decode" in d.log()
    assert d.info()["map_version"] == str(version)
    assert len(f.seen("CLUSTER.MAP")) > n
    # another cluster's map
    _, foreign = mkmap("00000000000000aa")
    f.set(map_bytes=foreign)
    assert wait_for(lambda: "the map is of cluster 00000000000000aa" in d.log(), 5.0), d.log()
    assert d.info()["map_version"] == str(version)
    assert d.cmd("CLUSTER.MAP") == data
    assert d.proc.poll() is None


def test_map_teaches_coordinators(env, mkmap):
    a, b = env.fake(), env.fake()  # a advertises only itself at registration
    version, data = mkmap(CLUSTER_HEX, [a.port, b.port])
    d = env.daemon(a.port).start()
    d.wait_info("lease_valid", "1")
    assert d.info()["coordinators"] == a.addr
    a.set(map_bytes=data, map_version=version)
    d.wait_info("coordinators", "%s,%s" % (a.addr, b.addr))
    a.stop()
    d.wait_info("coordinator", b.addr)
    t0 = time.monotonic()
    assert wait_for(lambda: b.count("DAEMON.HEARTBEAT", since=t0) >= 3, 5.0)


# -- bad answers from a coordinator -------------------------------------------------

def test_identity_write_failure_exits_1(env):
    f = env.fake()
    d = env.daemon(f.port)
    os.makedirs(os.path.join(d.data, "identity.tmp"))  # the temporary file cannot be made
    d.start(wait_serving=False)
    assert d.wait_exit() == 1
    assert "cannot record identity (daemon 1 of cluster %s)" % CLUSTER_HEX in d.log()
    assert not os.path.exists(os.path.join(d.data, "identity"))


def test_malformed_register_reply_retried(env):
    f = env.fake()
    f.set(raw={"DAEMON.REGISTER": b"*2\r\n:1\r\n:2\r\n"})
    d = env.daemon(f.port).start()
    assert wait_for(lambda: "malformed DAEMON.REGISTER reply" in d.log(), 5.0), d.log()
    assert "expected an array of 5 elements" in d.log()
    assert d.info()["state"] == "registering"
    f.set(raw={})
    d.wait_info("lease_valid", "1", timeout=10)
    assert read_identity(d) == "cluster_id=%s\ndaemon_id=1\n" % CLUSTER_HEX


def test_rejoin_answered_with_another_id_exits_1(env):
    f, d = running(env)
    assert d.signal(signal.SIGTERM) == 0
    f.set(next_id=7, raw={"DAEMON.REGISTER": b"*5\r\n:7\r\n" + bulk(CLUSTER_HEX) +
                          b":50\r\n:500\r\n*1\r\n" + bulk(f.addr)})
    d.start(wait_serving=False)
    assert d.wait_exit() == 1
    assert ("asked to rejoin as daemon 1 of cluster %s, the coordinator answered daemon 7"
            % CLUSTER_HEX) in d.log()
    assert read_identity(d) == "cluster_id=%s\ndaemon_id=1\n" % CLUSTER_HEX


def test_malformed_heartbeat_reply_is_a_failure(env):
    f, d = running(env)
    f.set(raw={"DAEMON.HEARTBEAT": b"*3\r\n:1\r\n:0\r\n:500\r\n"})  # heartbeat_ms 0
    d.wait_info("lease_valid", "0", timeout=5)
    assert "expected [map_version >= 0" in d.log()
    assert int(d.info()["heartbeats_failed"]) >= 2
    f.set(raw={"DAEMON.HEARTBEAT": b"-ERR something the daemon does not know\r\n"})
    assert wait_for(lambda: "something the daemon does not know" in d.log(), 5.0), d.log()
    assert d.info()["lease_valid"] == "0"
    f.set(raw={})
    d.wait_info("lease_valid", "1")


def test_rejoin_already_online_resumes_heartbeats(env):
    f, d = running(env)
    # the coordinator says OFFLINE, then refuses the rejoin as already online
    # (as if an earlier rejoin went through and its answer was lost)
    f.set(offline_heartbeats=1, register_error="ERR daemon 1 is already online")
    assert wait_for(lambda: "already has daemon 1 online; heartbeating" in d.log(), 5.0), d.log()
    f.set(register_error=None)
    d.wait_info("lease_valid", "1")
    assert d.proc.poll() is None
    assert len(f.seen("DAEMON.REGISTER")) == 2


def test_map_fetch_error_logged(env):
    f, d = running(env)
    f.set(map_version=3, raw={"CLUSTER.MAP": b"-TRYAGAIN no leader yet\r\n"})
    assert wait_for(lambda: "CLUSTER.MAP from %s failed: TRYAGAIN" % f.addr in d.log(), 5.0)
    info = d.info()
    assert info["map_version"] == "0" and info["lease_valid"] == "1"
