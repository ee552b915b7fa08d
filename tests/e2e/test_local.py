"""`keel local`: a whole cluster on loopback in one command.

Each test runs the real `keel local` with its data in the test's tmp dir and
on ports checked free (client ports and client + 10000 peer ports), with a
small Raft tick so that clusters form in a second or two.

Covered: a cluster starts, says "ready" and CLUSTER.STATUS shows every
coordinator as a voter and every daemon ONLINE at the announced addresses;
a daemon killed with SIGKILL is reported (name, signal, its log) while the
rest keep running; a second keel local on the same directory is refused;
SIGINT stops the daemons before the coordinators, reaps every child and
exits 0; running it again on the same directory restarts the same cluster
(same cluster id, same daemon ids). Refusals before anything starts: usage
errors (exit 2), a port in use (named), a non-empty foreign directory, a
corrupt local.conf, flags that contradict the recorded layout. Failures
after starting: a daemon refused by the coordinator during start-up (the
rest is stopped, exit 1), a cluster that is not ready in time, a daemon that
ignores SIGTERM (SIGKILL after --stop-timeout, exit 1), a second Ctrl-C
(kill at once), every child dead (exit 1), and keel local itself killed
(its children stop on their own).

Every wait is bounded; teardown kills whatever a test left running, by pid.
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

from conftest import HOST, KEEL_BIN, SANITIZER_MARKS, RawConn

TICK = ["--tick-ms", "20"]
READY_TIMEOUT = 25.0   # keel local's own bound is 20 s
EXIT_TIMEOUT = 20.0    # a clean stop: daemons (2 s bound each) then coordinators
REPORT_TIMEOUT = 5.0


# -- ports ---------------------------------------------------------------------

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
    """(P, Q): coordinator ports P.., daemon ports Q.., all free with their
    +10000 peer ports, below the kernel's ephemeral range."""
    for _ in range(200):
        p = random.randrange(12000, 21000)
        q = p + 40
        ports = list(range(p, p + ncoords)) + list(range(q, q + ndaemons))
        if all(port_free(x) and port_free(x + 10000) for x in ports):
            return p, q
    raise AssertionError("no free ports found")


# -- a keel local process --------------------------------------------------------

class LocalRun:
    """One `keel local` process; its merged stdout/stderr is collected line
    by line by a thread."""

    def __init__(self, data_dir, args):
        self.data_dir = str(data_dir)
        self.argv = [KEEL_BIN, "local", "-D", self.data_dir] + list(args)
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
        """The first match of regex pattern in an output line, waiting up to
        timeout seconds; fails the test with the output if none comes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    if line is not None:
                        m = rx.search(line)
                        if m:
                            return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] is None):
                    break
                self.cv.wait(left)
        raise AssertionError("no line matching %r within %ss; output:\n%s"
                             % (pattern, timeout, self.text()))

    def wait_exit(self, timeout=EXIT_TIMEOUT):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("keel local did not exit within %ss; output:\n%s"
                                 % (timeout, self.text()))
        self.reader.join(timeout=5)
        return rc

    def alive(self):
        return self.proc.poll() is None

    def pids(self):
        """name -> pid of every child this run started."""
        out = {}
        for m in re.finditer(r"started (\S+) \(pid (\d+)\)", self.text()):
            out[m.group(1)] = int(m.group(2))
        return out

    def kill_all(self):
        """Teardown: SIGKILL keel local and every child it named that still
        runs in our data directory."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in self.pids().values():
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    mine = self.data_dir.encode() in f.read()
            except OSError:
                continue
            if mine:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def gone(pid):
    """True if pid no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return all(gone(p) for p in pids)


@pytest.fixture
def runs():
    """start(data_dir, args) -> LocalRun; everything is killed at teardown."""
    started = []

    def start(data_dir, args):
        r = LocalRun(data_dir, args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill_all()
    for r in started:
        for mark in SANITIZER_MARKS:
            assert mark not in r.text(), "sanitizer report from keel local:\n" + r.text()
        if os.path.isdir(r.data_dir):
            no_sanitizer_reports(r.data_dir)


def start_cluster(runs, data_dir, ncoords, ndaemons, extra=()):
    """Starts keel local on fresh free ports and waits for "ready"; retries
    with other ports if one was taken meanwhile. Returns (run, P, Q,
    cluster id)."""
    for _ in range(4):
        p, q = pick_ports(ncoords, ndaemons)
        r = runs(data_dir, ["-c", str(ncoords), "-d", str(ndaemons), "--base-port", str(p),
                            "--daemon-base-port", str(q)] + TICK + list(extra))
        try:
            m = r.wait_line(r"^keel local: ready: cluster ([0-9a-f]{16}) ", READY_TIMEOUT)
            r.wait_line(r"again restarts it\.$", REPORT_TIMEOUT)  # the hints are all out
            return r, p, q, m.group(1)
        except AssertionError:
            if r.alive() or "is not free" not in r.text():
                raise
            r.wait_exit()
    raise AssertionError("could not find free ports for keel local")


def status(port):
    c = RawConn(HOST, port, timeout=5)
    try:
        reply = c.cmd("CLUSTER.STATUS")
    finally:
        c.close()
    assert isinstance(reply, bytes), reply
    return json.loads(reply)


def last_start(log_path):
    """The lines a child logged since its last start by keel local."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    i = text.rfind("==== ")
    assert i >= 0, "no keel local header in %s" % log_path
    return text[i:].splitlines()


def event_time(lines, event):
    for line in lines:
        if event in line:
            return line.split(" ", 1)[0]
    raise AssertionError("no %s in:\n%s" % (event, "\n".join(lines)))


def no_sanitizer_reports(data_dir):
    for name in os.listdir(data_dir):
        if name.endswith(".log"):
            with open(os.path.join(data_dir, name), errors="replace") as f:
                text = f.read()
            for mark in SANITIZER_MARKS:
                assert mark not in text, "sanitizer report in %s" % name


# -- the whole story ------------------------------------------------------------

def test_local_cluster_lifecycle(runs, tmp_path):
    d = tmp_path / "cluster"
    r, p, q, cid = start_cluster(runs, d, 3, 3)
    out = r.text()
    assert "creating a new cluster in %s" % d in out
    coords = ["%s:%d" % (HOST, p + i) for i in range(3)]
    daemons = ["%s:%d" % (HOST, q + i) for i in range(3)]
    assert "coordinators: " + " ".join(coords) in out
    assert "daemons:      " + " ".join(daemons) in out
    assert "redis-cli -p %d CLUSTER.STATUS" % p in out
    assert "keel.Client('127.0.0.1', %d)" % p in out
    assert str(d) in out
    with open(d / "local.conf") as f:
        conf = f.read()
    assert "coordinators=3\ndaemons=3\nbase_port=%d\ndaemon_base_port=%d\n" % (p, q) in conf

    st = status(p)
    assert st["cluster_id"] == cid
    assert sorted(c["address"] for c in st["coordinators"] if c["voter"]) == coords
    assert sorted(x["address"] for x in st["daemons"] if x["state"] == "ONLINE") == daemons
    ids = {x["address"]: x["id"] for x in st["daemons"]}
    pids = r.pids()
    assert sorted(pids) == ["coordinator-1", "coordinator-2", "coordinator-3",
                            "daemon-1", "daemon-2", "daemon-3"]
    assert not any(gone(x) for x in pids.values())
    assert len(last_start(d / "daemon-2.log")) > 1

    # the same directory cannot be run twice
    r2 = runs(d, TICK)
    assert r2.wait_exit(10) == 1
    assert "another keel local runs on it" in r2.text()

    # kill -9 of a daemon: reported, the rest keep running
    os.kill(pids["daemon-2"], signal.SIGKILL)
    r.wait_line(r"daemon-2 \(127\.0\.0\.1:%d\) was killed by signal 9" % (q + 1), REPORT_TIMEOUT)
    r.wait_line(r"last lines of .*daemon-2\.log", REPORT_TIMEOUT)
    r.wait_line(r"the other 5 processes keep running", REPORT_TIMEOUT)
    time.sleep(0.3)
    assert r.alive()
    assert not any(gone(pids[n]) for n in pids if n != "daemon-2")
    assert status(p)["cluster_id"] == cid

    # Ctrl-C: daemons first, then coordinators; every child reaped; exit 0
    t0 = time.monotonic()
    r.proc.send_signal(signal.SIGINT)
    assert r.wait_exit() == 0, r.text()
    assert time.monotonic() - t0 < EXIT_TIMEOUT
    assert all(gone(x) for x in pids.values())
    assert "Interrupt: stopping the cluster" in r.text()
    assert "SIGKILL" not in r.text()
    last_daemon = max(event_time(last_start(d / ("daemon-%d.log" % i)), "event=shutdown_requested")
                      for i in (1, 3))
    first_coord = min(event_time(last_start(d / ("coordinator-%d.log" % i)),
                                 "event=shutdown_requested") for i in (1, 2, 3))
    assert last_daemon < first_coord

    # the same directory again: the same cluster, the same daemons
    r3 = runs(d, TICK)
    m = r3.wait_line(r"^keel local: ready: cluster ([0-9a-f]{16}) ", READY_TIMEOUT)
    assert m.group(1) == cid
    assert "restarting the cluster %s in %s" % (cid, d) in r3.text()
    assert "resumes from" in r3.text() and "joins via" not in r3.text()
    assert r3.text().count("rejoins with its id") == 3
    st = status(p)
    assert st["cluster_id"] == cid
    assert {x["address"]: x["id"] for x in st["daemons"]} == ids
    assert sorted(x["address"] for x in st["daemons"] if x["state"] == "ONLINE") == daemons
    pids3 = r3.pids()
    r3.proc.send_signal(signal.SIGTERM)
    assert r3.wait_exit() == 0, r3.text()
    assert all(gone(x) for x in pids3.values())


# -- refusals before anything starts ---------------------------------------------

@pytest.mark.parametrize("args,msg", [
    (["-c", "0"], "--coordinators needs a number in 1..15"),
    (["-c", "16"], "--coordinators needs a number in 1..15"),
    (["-d", "x"], "--daemons needs a number in 0..64"),
    (["--base-port", "70000"], "--base-port needs a number in 1..65535"),
    (["--tick-ms", "0"], "--tick-ms needs a number in 1..10000"),
    (["--stop-timeout", "-1"], "--stop-timeout needs a number"),
    (["--bogus"], "unknown option '--bogus'"),
    (["-x"], "unknown option '-x'"),
    (["-c"], "-c needs a value"),
    (["extra"], "unexpected argument 'extra'"),
    (["-D", ""], "--data needs a directory"),
    (["--base-port", "60000"], "past 65535"),
    (["--base-port", "15000", "--daemon-base-port", "15002"], "overlap (at 15002)"),
    (["--base-port", "15000", "--daemon-base-port", "5001"],
     "the coordinator client ports 15000..15002 and the daemon peer ports 15001..15003 overlap"),
])
def test_usage_errors(tmp_path, args, msg):
    argv = [KEEL_BIN, "local"] + (args if "-D" in args else ["-D", str(tmp_path / "x")] + args)
    p = subprocess.run(argv, capture_output=True, timeout=10)
    assert p.returncode == 2, p
    assert msg in p.stderr.decode(), p.stderr
    assert not os.path.exists(tmp_path / "x" / "coordinator-1")


def test_help(tmp_path):
    p = subprocess.run([KEEL_BIN, "local", "--help"], capture_output=True, timeout=10)
    assert p.returncode == 0
    assert b"usage: keel local" in p.stdout and b"--daemon-base-port" in p.stdout
    p = subprocess.run([KEEL_BIN, "help"], capture_output=True, timeout=10)
    assert b"keel local" in p.stdout


def test_port_in_use_is_named(tmp_path):
    p, q = pick_ports(3, 2)
    held = []
    for port in (p + 1, q + 1 + 10000):  # coordinator-2's client, daemon-2's peer
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((HOST, port))
        s.listen(1)
        held.append(s)
    try:
        d = tmp_path / "ports"
        proc = subprocess.run([KEEL_BIN, "local", "-D", str(d), "-c", "3", "-d", "2",
                               "--base-port", str(p), "--daemon-base-port", str(q)],
                              capture_output=True, timeout=10)
    finally:
        for s in held:
            s.close()
    err = proc.stderr.decode()
    assert proc.returncode == 1, proc
    assert "port %d (coordinator-2's client port) on 127.0.0.1 is not free" % (p + 1) in err
    assert "port %d (daemon-2's peer port) on 127.0.0.1 is not free" % (q + 10001) in err
    assert "2 ports are in use" in err
    assert sorted(os.listdir(d)) == ["keel.lock"]  # nothing started, nothing recorded


def test_refuses_a_foreign_directory(tmp_path):
    d = tmp_path / "home"
    d.mkdir()
    (d / "notes.txt").write_text("mine\n")
    p = subprocess.run([KEEL_BIN, "local", "-D", str(d)], capture_output=True, timeout=10)
    assert p.returncode == 1
    assert "is not empty and holds no keel local cluster" in p.stderr.decode()
    assert sorted(os.listdir(d)) == ["keel.lock", "notes.txt"]


@pytest.mark.parametrize("conf,msg", [
    ("version=1\ncoordinators=3\ndaemons=3\nbase_port=1982\n", "it has no daemon_base_port line"),
    ("version=2\ncoordinators=3\ndaemons=3\nbase_port=1982\ndaemon_base_port=2012\n",
     "corrupt at line 1"),
    ("version=1\ncoordinators=3\ncoordinators=3\n", "corrupt at line 3"),
    ("version=1\nwhat=3\n", "corrupt at line 2"),
    ("version=1\ncoordinators=99\n", "corrupt at line 2"),
    ("x" * 2000, "longer than 1024 bytes"),
], ids=["missing-key", "version", "duplicate", "unknown-key", "out-of-range", "too-long"])
def test_corrupt_local_conf(tmp_path, conf, msg):
    d = tmp_path / "c"
    d.mkdir()
    (d / "local.conf").write_text(conf)
    p = subprocess.run([KEEL_BIN, "local", "-D", str(d)], capture_output=True, timeout=10)
    assert p.returncode == 1
    assert msg in p.stderr.decode(), p.stderr


@pytest.mark.parametrize("args,msg", [
    (["--base-port", "15100"], "uses --base-port 15000"),
    (["--daemon-base-port", "15100"], "uses --daemon-base-port 15040"),
    (["-c", "1"], "has 3 coordinators; keel local restarts all of them (-c 3 or more)"),
    (["-d", "1"], "has 2 daemons; keel local restarts all of them (-d 2 or more)"),
])
def test_restart_flags_must_agree(tmp_path, args, msg):
    d = tmp_path / "c"
    d.mkdir()
    (d / "local.conf").write_text("version=1\ncoordinators=3\ndaemons=2\nbase_port=15000\n"
                                  "daemon_base_port=15040\n")
    p = subprocess.run([KEEL_BIN, "local", "-D", str(d)] + args, capture_output=True,
                       timeout=10)
    assert p.returncode == 1
    assert msg in p.stderr.decode(), p.stderr
    assert not os.path.exists(d / "coordinator-1")


# -- failures after starting -------------------------------------------------------

def test_daemon_refused_at_start_stops_everything(runs, tmp_path):
    p, q = pick_ports(1, 1)
    d = tmp_path / "refused"
    (d / "daemon-1").mkdir(parents=True)
    (d / "local.conf").write_text("version=1\ncoordinators=1\ndaemons=1\nbase_port=%d\n"
                                  "daemon_base_port=%d\n" % (p, q))
    (d / "daemon-1" / "identity").write_text("cluster_id=0123456789abcdef\ndaemon_id=1\n")
    r = runs(d, TICK)
    assert r.wait_exit() == 1, r.text()
    out = r.text()
    assert "daemon-1 (127.0.0.1:%d) exited with status 1" % q in out
    assert "0123456789abcdef" in out  # the refusal, from the daemon's log tail
    assert "could not start the cluster; stopping what was started" in out
    assert all(gone(x) for x in r.pids().values())


def test_not_ready_in_time(runs, tmp_path):
    d = tmp_path / "lost"
    r, p, q, cid = start_cluster(runs, d, 3, 0)
    r.proc.send_signal(signal.SIGINT)
    assert r.wait_exit() == 0, r.text()
    # coordinators 2 and 3 lose their data: coordinator-1 alone has no quorum
    for i in (2, 3):
        for f in os.listdir(d / ("coordinator-%d" % i)):
            os.unlink(d / ("coordinator-%d" % i) / f)
        os.rmdir(d / ("coordinator-%d" % i))
    r = runs(d, TICK + ["--ready-timeout", "2"])
    assert r.wait_exit() == 1, r.text()
    out = r.text()
    assert "joins via 127.0.0.1:%d" % p in out
    assert "the cluster is not ready after 2 s" in out
    assert "coordinator-1 gives no status" in out and "TRYAGAIN" in out
    assert all(gone(x) for x in r.pids().values())


def test_daemon_ignoring_sigterm_is_killed(runs, tmp_path):
    d = tmp_path / "stuck"
    r, p, q, cid = start_cluster(runs, d, 1, 1, ["--stop-timeout", "1"])
    pids = r.pids()
    os.kill(pids["daemon-1"], signal.SIGSTOP)  # a stopped process acts on SIGTERM never
    t0 = time.monotonic()
    r.proc.send_signal(signal.SIGINT)
    assert r.wait_exit() == 1, r.text()
    assert time.monotonic() - t0 < 8
    assert re.search(r"daemon-1 \(pid %d\) did not stop within 1 s of SIGTERM; killing it "
                     r"\(SIGKILL\)" % pids["daemon-1"], r.text())
    assert all(gone(x) for x in pids.values())


def test_second_interrupt_kills_at_once(runs, tmp_path):
    d = tmp_path / "impatient"
    r, p, q, cid = start_cluster(runs, d, 1, 1)
    pids = r.pids()
    os.kill(pids["daemon-1"], signal.SIGSTOP)
    r.proc.send_signal(signal.SIGINT)
    r.wait_line(r"stopping 2 processes", REPORT_TIMEOUT)
    t0 = time.monotonic()
    r.proc.send_signal(signal.SIGINT)
    assert r.wait_exit() == 1, r.text()
    assert time.monotonic() - t0 < 5  # well before the 10 s stop timeout
    assert "Interrupt again: killing what is left now (SIGKILL)" in r.text()
    assert all(gone(x) for x in pids.values())


def test_every_child_dead_ends_keel_local(runs, tmp_path):
    d = tmp_path / "alone"
    r, p, q, cid = start_cluster(runs, d, 1, 0)
    os.kill(r.pids()["coordinator-1"], signal.SIGKILL)
    assert r.wait_exit(10) == 1, r.text()
    out = r.text()
    assert "coordinator-1 (127.0.0.1:%d) was killed by signal 9" % p in out
    assert "every process of the cluster has exited" in out


def test_children_stop_when_keel_local_is_killed(runs, tmp_path):
    d = tmp_path / "orphans"
    r, p, q, cid = start_cluster(runs, d, 1, 1)
    pids = r.pids()
    r.proc.kill()
    r.proc.wait(timeout=10)
    assert wait_gone(list(pids.values()), 15), "children outlived keel local"
    # they stopped cleanly (SIGTERM from the kernel), so a restart works
    r2 = runs(d, TICK)
    m = r2.wait_line(r"^keel local: ready: cluster ([0-9a-f]{16}) ", READY_TIMEOUT)
    assert m.group(1) == cid
    r2.proc.send_signal(signal.SIGINT)
    assert r2.wait_exit() == 0, r2.text()
