"""harness: real-process keel clusters for tests and benchmarks.

Run the cluster tests with:

    /usr/bin/python3 -m pytest -q tests/cluster            # from the repo root
    KEEL_BIN=build/asan/keel /usr/bin/python3 -m pytest -q tests/cluster

The binary is $KEEL_BIN, else <repo>/build/keel (build it with `make -j2 all`).

What it gives (standard library only, so bench/ scripts import it too):

- Cluster: starts C coordinators (`keel coordinator -f`) and D daemons
  (`keel daemon -f`), each on its own loopback address (127.0.0.2, 127.0.0.3,
  ...: all of 127.0.0.0/8 reaches this machine, and keel binds its outgoing
  connections to the node's address) and on ports verified free on that
  address, each in its own data directory under the cluster's base directory.
  Each process's stdout and stderr go to a log file in its data directory
  (harness-<kind>-<run>.log, one per start).
- Node control: kill9 (SIGKILL), pause/resume (SIGSTOP/SIGCONT), stop
  (SIGTERM, exit status 0 asserted), restart with the same data directory and
  ports, start_expect_exit for starts that must be refused.
- A RESP2 client (Conn, call) and INFO / CLUSTER.STATUS / CLUSTER.MAP helpers.
- wait_for(cond, timeout, what): polls with a bounded timeout and raises
  WaitTimeout naming what it waited for and the last value or exception seen.
- Leader discovery from every live coordinator's INFO raft section
  (wait_leader: one node claims leadership at the highest term and a majority
  of the coordinators agree on it).
- FakeDaemon: registers through DAEMON.REGISTER and heartbeats from a thread,
  so coordinator tests can add spaces (placement needs an ONLINE daemon)
  without depending on `keel daemon`.
- Teardown kills every process by pid (SIGKILL; SIGCONT is not needed for a
  stopped process), and reports processes that exited on their own and
  sanitizer reports in any log. Logs are kept in the base directory;
  log_report() gives the tail of each.

Every wait is bounded: process starts and exits, socket reads (per-call
timeouts) and polling all have deadlines.
"""

import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KEEL_BIN = os.environ.get("KEEL_BIN") or os.path.join(REPO, "build", "keel")

START_TIMEOUT = 10.0   # a process must answer PING within this
STOP_TIMEOUT = 15.0    # a process must exit within this after a signal
CALL_TIMEOUT = 3.0     # default socket timeout for one request
PORT_LOW, PORT_HIGH = 10000, 22000  # client ports; +10000 (peer ports) stays below
                                    # the kernel's ephemeral range (32768..)
PEER_OFFSET = 10000

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


# -- waiting ------------------------------------------------------------------

class WaitTimeout(AssertionError):
    """wait_for gave up; the message says what it waited for."""


def wait_for(cond, timeout, what="condition", interval=0.05):
    """Calls cond() every `interval` seconds until it returns a truthy value,
    which is returned. An exception from cond() counts as not yet (connection
    refused while a node starts, a timeout while an election runs). After
    `timeout` seconds raises WaitTimeout with `what` and the last value or
    exception."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = cond()
            if v:
                return v
            last = "returned %r" % (v,)
        except (OSError, RespError, ValueError, KeyError, ProtocolError) as e:
            last = "raised %s: %s" % (type(e).__name__, e)
        if time.monotonic() >= deadline:
            raise WaitTimeout("timed out after %.1fs waiting for %s; last check %s"
                              % (timeout, what, last))
        time.sleep(interval)


# -- RESP client ----------------------------------------------------------------

class RespError(Exception):
    """An error reply. .code is its first word (ERR, TRYAGAIN, NOQUORUM...)."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text
        self.code = text.split(" ", 1)[0]


class Simple(str):
    """A simple-string reply (+OK)."""


class ProtocolError(Exception):
    """The peer sent something that is not RESP2, or closed mid-reply."""


def encode(*args):
    """A request as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode("utf-8", "surrogateescape")
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _NeedMore(Exception):
    pass


def _parse(buf, pos):
    """One RESP2 reply at buf[pos:] -> (value, end); error replies are
    returned as RespError instances (not raised) so a pipeline keeps its
    order."""
    i = buf.find(b"\r\n", pos)
    if i < 0:
        raise _NeedMore()
    t, rest = buf[pos:pos + 1], buf[pos + 1:i]
    pos = i + 2
    try:
        if t == b"+":
            return Simple(rest.decode("utf-8", "replace")), pos
        if t == b"-":
            return RespError(rest.decode("utf-8", "replace")), pos
        if t == b":":
            return int(rest), pos
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None, pos
            if len(buf) < pos + n + 2:
                raise _NeedMore()
            if buf[pos + n:pos + n + 2] != b"\r\n":
                raise ProtocolError("bulk string not ended by CRLF")
            return buf[pos:pos + n], pos + n + 2
        if t == b"*":
            n = int(rest)
            if n < 0:
                return None, pos
            out = []
            for _ in range(n):
                v, pos = _parse(buf, pos)
                out.append(v)
            return out, pos
    except ValueError:
        raise ProtocolError("bad length in %r" % buf[pos - 2 - len(rest) - 1:pos])
    raise ProtocolError("not a RESP reply: %r" % buf[pos - len(rest) - 3:pos])


class Conn:
    """One client connection. cmd() returns the reply and raises RespError
    for an error reply; read() returns error replies as RespError values (for
    pipelines). Socket errors and timeouts raise OSError (socket.timeout is
    one)."""

    def __init__(self, host, port, timeout=CALL_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.buf = b""

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def send(self, *args):
        self.sock.sendall(encode(*args))

    def send_many(self, commands):
        self.sock.sendall(b"".join(encode(*c) for c in commands))

    def read(self):
        while True:
            try:
                v, end = _parse(self.buf, 0)
                self.buf = self.buf[end:]
                return v
            except _NeedMore:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("connection closed by the server")
                self.buf += chunk

    def cmd(self, *args):
        self.send(*args)
        v = self.read()
        if isinstance(v, RespError):
            raise v
        return v

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def call(host, port, *args, timeout=CALL_TIMEOUT):
    """One command on a fresh connection; raises RespError or OSError."""
    with Conn(host, port, timeout) as c:
        return c.cmd(*args)


def try_call(host, port, *args, timeout=CALL_TIMEOUT):
    """Like call() but returns the RespError or OSError instead of raising."""
    try:
        return call(host, port, *args, timeout=timeout)
    except (RespError, OSError, ProtocolError) as e:
        return e


def parse_info(text):
    """INFO text -> {section name lower-case: {key: value}}."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out, cur = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            cur = out.setdefault(line[1:].strip().lower(), {})
        elif ":" in line and cur is not None:
            k, v = line.split(":", 1)
            cur[k] = v
    return out


def leader_hint(err):
    """(host, port) from '-TRYAGAIN leader is host:port ...', else None."""
    m = re.search(r"leader is ([0-9A-Za-z.\-]+):(\d+)", str(err))
    return (m.group(1), int(m.group(2))) if m else None


# -- addresses and ports --------------------------------------------------------

_addr_counter = itertools.count(2)
_taken = set()
_taken_lock = threading.Lock()
# KEEL_TEST_NET=N puts this process's nodes in 127.N.0.0/16, so two suites
# (a long chaos campaign and make test) can share the machine without one's
# firewall rules touching the other's nodes. Default 0.
_net = int(os.environ.get("KEEL_TEST_NET", "0"))
if not 0 <= _net <= 255:
    raise ValueError("KEEL_TEST_NET must be 0..255")


def next_address():
    """A loopback address not yet handed out in this process: 127.N.0.2,
    127.N.0.3, ..., 127.N.0.254, 127.N.1.2, ... (N from KEEL_TEST_NET)"""
    n = next(_addr_counter)
    return "127.%d.%d.%d" % (_net, (n - 2) // 253 % 256, (n - 2) % 253 + 2)


def port_free(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(host):
    """A port P free on host with P + PEER_OFFSET free too (the default peer
    port of coordinators and daemons), never handed out before in this
    process."""
    for _ in range(500):
        p = random.randrange(PORT_LOW, PORT_HIGH)
        with _taken_lock:
            if (host, p) in _taken:
                continue
            if port_free(host, p) and port_free(host, p + PEER_OFFSET):
                _taken.add((host, p))
                return p
    raise RuntimeError("no free port pair on %s" % host)


def ping(host, port, timeout=1.0):
    try:
        return call(host, port, "PING", timeout=timeout) == "PONG"
    except (OSError, RespError, ProtocolError):
        return False


# -- processes ------------------------------------------------------------------

class StartError(AssertionError):
    pass


class Node:
    """One keel process (coordinator or daemon) with a fixed address, ports
    and data directory across restarts."""

    kind = "node"

    def __init__(self, cluster, name, host=None, port=None, extra_args=()):
        self.cluster = cluster
        self.name = name
        self.host = host or next_address()
        self.port = port or free_port(self.host)
        self.peer_port = self.port + PEER_OFFSET
        self.data_dir = os.path.join(cluster.base_dir, name)
        os.makedirs(self.data_dir, exist_ok=True)
        self.extra_args = list(extra_args)
        self.proc = None
        self.runs = 0
        self.logs = []
        self.paused = False
        self.expected_exit = True   # nothing running yet
        self.unexpected = []
        self.removed = False        # a coordinator removed from the cluster

    # argv is given by the subclass
    def argv(self):
        raise NotImplementedError

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def __repr__(self):
        return "<%s %s %s pid %s>" % (self.kind, self.name, self.addr,
                                       self.proc.pid if self.proc else None)

    def _spawn(self):
        assert not self.alive(), "%s is already running" % self.name
        self._note_exit()
        self.runs += 1
        path = os.path.join(self.data_dir, "harness-%s-%d.log" % (self.kind, self.runs))
        self.logs.append(path)
        argv = self.argv()
        with open(path, "wb") as logf:
            logf.write(("$ %s\n" % " ".join(argv)).encode())
            logf.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.paused = False
        self.expected_exit = False
        self.started_at = time.monotonic()

    def start(self, wait=True):
        """Starts the process; with wait, until it answers PING (raises
        StartError with the log tail if it exits or does not answer)."""
        self._spawn()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.expected_exit = True
                raise StartError("%s exited with status %s while starting:\n%s"
                                 % (self.name, self.proc.returncode, self.log_tail()))
            if ping(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.02)
        raise StartError("%s did not answer PING within %.0fs:\n%s"
                         % (self.name, timeout, self.log_tail()))

    def start_expect_exit(self, timeout=START_TIMEOUT):
        """Starts a process that must exit by itself (a refused start).
        Returns (exit status, log text of this run). Kills it and raises if it
        is still running after timeout."""
        self._spawn()
        self.expected_exit = True
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError("%s was expected to exit but still ran after %.0fs:\n%s"
                                 % (self.name, timeout, self.log_tail()))
        return rc, self.log_text()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def live(self):
        """Running and not stopped with SIGSTOP."""
        return self.alive() and not self.paused

    def _note_exit(self):
        """Records an exit nobody asked for (a crash)."""
        if self.proc is not None and self.proc.poll() is not None and not self.expected_exit:
            self.unexpected.append("%s (pid %d) exited on its own with status %s; log %s"
                                   % (self.name, self.proc.pid, self.proc.returncode,
                                      self.logs[-1]))
            self.expected_exit = True

    def check_running(self):
        """Asserts the process is still running (it did not crash)."""
        if not self.alive():
            self._note_exit()
            raise AssertionError("%s is not running (status %s):\n%s"
                                 % (self.name, self.proc and self.proc.returncode,
                                    self.log_tail()))

    def kill9(self):
        """SIGKILL and wait until the process is gone."""
        self.check_running()
        self.expected_exit = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self.paused = False

    def pause(self):
        self.check_running()
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self):
        self.check_running()
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def terminate(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig and returns the exit status (raises if it does not exit
        within timeout; the process is then killed)."""
        self.check_running()
        self.expected_exit = True
        if self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError("%s did not exit within %.0fs of signal %d:\n%s"
                                 % (self.name, timeout, sig, self.log_tail()))

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Clean stop: sig (SIGTERM), exit status 0 asserted."""
        rc = self.terminate(sig, timeout)
        assert rc == 0, "%s exited with status %s on signal %d:\n%s" % (
            self.name, rc, sig, self.log_tail())

    def restart(self, wait=True):
        """Starts again with the same data directory, address and ports."""
        if self.alive():
            self.stop()
        return self.start(wait)

    def teardown(self):
        """Kills the process by pid whatever its state; returns problems."""
        if self.proc is not None:
            if self.alive():
                self.expected_exit = True
                self.proc.send_signal(signal.SIGKILL)
                try:
                    self.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.unexpected.append("%s (pid %d) survived SIGKILL" % (self.name,
                                                                           self.proc.pid))
            else:
                self._note_exit()
        problems = list(self.unexpected)
        for p in self.logs:
            text = _read(p)
            for mark in SANITIZER_MARKS:
                if mark in text:
                    problems.append("sanitizer report (%s) in %s" % (mark, p))
                    break
        return problems

    # -- talking to it ------------------------------------------------------------

    def call(self, *args, timeout=CALL_TIMEOUT):
        return call(self.host, self.port, *args, timeout=timeout)

    def try_call(self, *args, timeout=CALL_TIMEOUT):
        return try_call(self.host, self.port, *args, timeout=timeout)

    def conn(self, timeout=CALL_TIMEOUT):
        return Conn(self.host, self.port, timeout)

    def info(self, section=None, timeout=CALL_TIMEOUT):
        args = ("INFO", section) if section else ("INFO",)
        return parse_info(self.call(*args, timeout=timeout))

    # -- logs -----------------------------------------------------------------

    def log_text(self, index=-1):
        return _read(self.logs[index]) if self.logs else ""

    def log_tail(self, lines=40, index=-1):
        text = self.log_text(index)
        return "\n".join(text.splitlines()[-lines:])


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Coordinator(Node):
    """`keel coordinator -f -l HOST -p PORT -D DIR [-c HOST -P PORT]`."""

    kind = "coordinator"

    def __init__(self, cluster, name, join=None, tick_ms=None, test_faults=False, **kw):
        super().__init__(cluster, name, **kw)
        self.join = join            # a Coordinator to join through, or None to bootstrap
        self.tick_ms = tick_ms
        self.test_faults = test_faults
        self._id = None

    def argv(self):
        a = [KEEL_BIN, "coordinator", "-f", "-l", self.host, "-p", str(self.port),
             "-D", self.data_dir]
        if self.join is not None:
            a += ["-c", self.join.host, "-P", str(self.join.port)]
        if self.tick_ms:
            a += ["--tick-ms", str(self.tick_ms)]
        if self.test_faults:
            a += ["--test-faults"]
        return a + self.extra_args

    def raft(self, timeout=CALL_TIMEOUT):
        """This node's INFO raft section ('role', 'term', 'leader', 'commit',
        'applied', ...) plus 'id' (the server section's coordinator_id), with
        integers where they are numbers."""
        info = self.info(timeout=timeout)
        sec = info.get("raft")
        if sec is None or "coordinator_id" not in info.get("server", {}):
            raise ProtocolError("%s: INFO has no raft section or coordinator_id" % self.name)
        out = {"id": info["server"]["coordinator_id"]}
        out.update(sec)
        for k, v in out.items():
            out[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        return out

    @property
    def id(self):
        """This coordinator's id (from INFO, cached once known)."""
        if self._id is None:
            self._id = wait_for(lambda: self.raft(timeout=1.0).get("id"), 10,
                                "%s to report its raft id" % self.name)
        return self._id

    def status(self, stale=True, timeout=CALL_TIMEOUT):
        args = ("CLUSTER.STATUS", "STALE") if stale else ("CLUSTER.STATUS",)
        return json.loads(self.call(*args, timeout=timeout))

    def map_bytes(self, stale=True, timeout=CALL_TIMEOUT):
        args = ("CLUSTER.MAP", "STALE") if stale else ("CLUSTER.MAP",)
        return self.call(*args, timeout=timeout)

    def config_get(self, name, stale=False, timeout=CALL_TIMEOUT):
        args = ["CLUSTER.CONFIG", "GET", name] + (["STALE"] if stale else [])
        return int(self.call(*args, timeout=timeout))

    def spaces(self, stale=False, timeout=CALL_TIMEOUT):
        args = ("SPACE.LIST", "STALE") if stale else ("SPACE.LIST",)
        return [s.decode() for s in self.call(*args, timeout=timeout)]

    def fault_drop(self, ids):
        return self.call("DEBUG.FAULT", "DROP", *[str(i) for i in ids])

    def fault_heal(self):
        return self.call("DEBUG.FAULT", "HEAL")


class Daemon(Node):
    """`keel daemon -f --listen=HOST --listen-port=PORT --coordinator=HOST
    --coordinator-port=PORT --data=DIR`."""

    kind = "daemon"

    def __init__(self, cluster, name, coordinator, **kw):
        super().__init__(cluster, name, **kw)
        self.coordinator = coordinator

    def argv(self):
        return [KEEL_BIN, "daemon", "-f", "--listen=%s" % self.host,
                "--listen-port=%d" % self.port,
                "--coordinator=%s" % self.coordinator.host,
                "--coordinator-port=%d" % self.coordinator.port,
                "--data=%s" % self.data_dir] + self.extra_args

    def lease(self, timeout=1.0):
        """(lease_valid as bool, lease_ms_left) from INFO."""
        for sec in self.info(timeout=timeout).values():
            if "lease_valid" in sec:
                return sec["lease_valid"] == "1", int(sec.get("lease_ms_left", "0"))
        raise ProtocolError("%s: INFO has no lease_valid" % self.name)

    @property
    def identity_path(self):
        return os.path.join(self.data_dir, "identity")


# -- a registered daemon without a process ----------------------------------------

class FakeDaemon:
    """Registers a daemon id with DAEMON.REGISTER (through any coordinator)
    and keeps it ONLINE by heartbeating the leader from a thread, following
    -TRYAGAIN redirects and registering again (same id) when declared
    OFFLINE. It listens nowhere: the coordinators of this issue never connect
    to daemons. For coordinator tests that need an ONLINE daemon to place
    spaces on."""

    def __init__(self, cluster, host=None, port=None):
        self.cluster = cluster
        self.host = host or next_address()
        self.port = port or free_port(self.host)
        self.id = None
        self.cluster_id = None
        self.heartbeat_ms = 250
        self.coords = []
        self.target = None
        self.errors = []           # replies that are not the documented ones
        self.beats = 0
        self.progress = None       # (copies, bytes_left, bytes_per_s, entries_left) to report
        self._stop = threading.Event()
        self._thread = None

    def _register(self, via):
        args = ["DAEMON.REGISTER", self.host, str(self.port), str(self.port + PEER_OFFSET)]
        if self.id is not None:
            args += [str(self.id), self.cluster_id]
        r = call(via[0], via[1], *args, timeout=2.0)
        self.id, self.cluster_id = r[0], r[1].decode()
        self.heartbeat_ms = r[2]
        self.coords = [tuple_addr(a.decode()) for a in r[4]]
        return r

    def start(self, timeout=10):
        def attempt():
            for c in self.cluster.live_coordinators():
                try:
                    return self._register((c.host, c.port))
                except RespError as e:
                    if e.code not in ("TRYAGAIN", "NOQUORUM"):
                        raise AssertionError("DAEMON.REGISTER refused: %s" % e)
                except (OSError, ProtocolError):
                    pass
            return None
        wait_for(attempt, timeout, "fake daemon %s:%d to register" % (self.host, self.port))
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="fake-daemon-%s" % self.id)
        self._thread.start()
        return self

    def _run(self):
        i = 0
        while not self._stop.is_set():
            target = self.target or self.coords[i % len(self.coords)]
            try:
                extra = (["PROGRESS"] + [str(v) for v in self.progress]) if self.progress else []
                r = call(target[0], target[1], "DAEMON.HEARTBEAT", str(self.id), *extra,
                         timeout=1.0)
                self.target = target
                self.beats += 1
                if isinstance(r, list) and len(r) >= 2:
                    self.heartbeat_ms = max(20, r[1])
            except RespError as e:
                hint = leader_hint(e)
                if e.code == "TRYAGAIN" and hint:
                    self.target = hint
                    continue
                self.target = None
                i += 1
                if "OFFLINE" in e.text:
                    try:
                        self._register(target)
                    except (RespError, OSError, ProtocolError):
                        pass
                elif e.code not in ("TRYAGAIN", "NOQUORUM"):
                    self.errors.append(e.text)
            except (OSError, ProtocolError):
                self.target = None
                i += 1
            self._stop.wait(self.heartbeat_ms / 1000.0)

    def stop(self, shutdown=False):
        """Stops heartbeating; with shutdown, records SHUTDOWN first."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if shutdown:
            self.cluster.write(["DAEMON.SHUTDOWN", str(self.id)])


def tuple_addr(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


# -- clusters -------------------------------------------------------------------

class Cluster:
    """A set of coordinators and daemons under base_dir. Use as a context
    manager (or call teardown()) so every process is killed."""

    def __init__(self, base_dir, tick_ms=20, test_faults=False, coord_args=()):
        self.base_dir = str(base_dir)
        self.coord_args = list(coord_args)  # extra arguments for every coordinator
        os.makedirs(self.base_dir, exist_ok=True)
        self.tick_ms = tick_ms
        self.test_faults = test_faults
        self.coordinators = []
        self.daemons = []
        self.fakes = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()

    # -- building ---------------------------------------------------------------

    def add_coordinator(self, join="auto", start=True, wait_voter=True, name=None, **kw):
        """Creates (and by default starts) a coordinator. join="auto" joins
        through a live coordinator when there is one, else bootstraps; join=None
        bootstraps; a Coordinator joins through that one. With wait_voter,
        waits until the cluster reports the new node as a voter."""
        if join == "auto":
            live = self.live_coordinators()
            join = live[0] if live else None
        name = name or "c%d" % (len(self.coordinators) + 1)
        kw.setdefault("tick_ms", self.tick_ms)
        kw.setdefault("test_faults", self.test_faults)
        kw.setdefault("extra_args", self.coord_args)
        c = Coordinator(self, name, join=join, **kw)
        self.coordinators.append(c)
        if start:
            c.start()
            if wait_voter:
                self.wait_voter(c)
        return c

    def start_coordinators(self, n):
        """Bootstraps one coordinator and joins n-1 more, one at a time, each
        a voter before the next starts (the tutorial's sequence)."""
        first = self.add_coordinator(join=None)
        self.wait_leader()
        for _ in range(n - 1):
            self.add_coordinator(join=first)
        return self.coordinators

    def add_daemon(self, coordinator=None, start=True, name=None, **kw):
        coordinator = coordinator or self.live_coordinators()[0]
        name = name or "d%d" % (len(self.daemons) + 1)
        d = Daemon(self, name, coordinator, **kw)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def add_fake_daemon(self):
        f = FakeDaemon(self)
        self.fakes.append(f)
        return f.start()

    # -- views ------------------------------------------------------------------

    def members(self):
        """Coordinators that belong to the configuration (not removed)."""
        return [c for c in self.coordinators if not c.removed and c.runs > 0]

    def live_coordinators(self):
        return [c for c in self.coordinators if c.live() and not c.removed]

    def majority(self):
        return len(self.members()) // 2 + 1

    def leader(self, among=None, quorum=None):
        """The coordinator that claims leadership at the highest term, if
        `quorum` (default: a majority of the members) of the coordinators
        asked (`among`, default the live ones) report that term and that
        leader; else None. One pass, no waiting."""
        nodes = among if among is not None else self.live_coordinators()
        views = {}
        for c in nodes:
            try:
                views[c] = c.raft(timeout=1.0)
            except (OSError, RespError, ProtocolError):
                pass
        claims = [(v["term"], c) for c, v in views.items() if v.get("role") == "leader"]
        if not claims:
            return None
        term, lead = max(claims, key=lambda x: x[0])
        agree = sum(1 for v in views.values()
                    if v.get("term") == term and v.get("leader") == views[lead].get("id"))
        return lead if agree >= (quorum or self.majority()) else None

    def wait_leader(self, timeout=15, among=None, interval=0.05, quorum=None):
        return wait_for(lambda: self.leader(among, quorum), timeout,
                        "a leader agreed by %s" % (quorum or "a majority"), interval)

    def followers(self, leader=None):
        leader = leader or self.wait_leader()
        return [c for c in self.live_coordinators() if c is not leader]

    def coord_entry(self, status, node):
        for e in status.get("coordinators", []):
            if e.get("address") == node.addr:
                return e
        return None

    def wait_voter(self, node, timeout=20):
        """Until the leader's CLUSTER.STATUS lists node as a voter. The
        leader is looked for among the other coordinators: node itself may
        still be joining."""
        def check():
            others = [c for c in self.live_coordinators() if c is not node] or [node]
            st = self.wait_leader(timeout=5, among=others, quorum=1).status(stale=True)
            e = self.coord_entry(st, node)
            return e is not None and e.get("voter") is True
        node.check_running()
        return wait_for(check, timeout, "%s to become a voter" % node.name)

    def daemon_entry(self, daemon_id, stale=True):
        st = self.wait_leader(timeout=5).status(stale=stale)
        for e in st.get("daemons", []):
            if e.get("id") == daemon_id:
                return e
        return None

    def daemon_id_of(self, node):
        """The id the map gives to the daemon at node's address."""
        st = self.wait_leader(timeout=5).status(stale=True)
        for e in st.get("daemons", []):
            if e.get("address") == node.addr:
                return e["id"]
        return None

    def maps(self, nodes=None):
        """{node: CLUSTER.MAP STALE bytes} for the given (default: live) nodes."""
        nodes = nodes if nodes is not None else self.live_coordinators()
        return {c: c.map_bytes(stale=True, timeout=2.0) for c in nodes}

    def wait_converged(self, nodes=None, timeout=15):
        """Until every given coordinator's applied map is the same bytes;
        returns those bytes."""
        def check():
            ms = self.maps(nodes)
            vals = set(ms.values())
            return next(iter(vals)) if len(vals) == 1 else None
        return wait_for(check, timeout, "the coordinators' maps to be equal")

    # -- writing ----------------------------------------------------------------

    def write(self, args, via=None, timeout=15, attempt_timeout=2.0, interval=0.02):
        """Sends an admin write until it is acknowledged; retries on
        -TRYAGAIN, -NOQUORUM and connection errors (rotating over `via`, a
        node or a list, default the live coordinators). Returns the reply;
        raises RespError for any other error and WaitTimeout at the deadline."""
        if via is None:
            targets = lambda: self.live_coordinators()  # noqa: E731
        elif isinstance(via, Node):
            targets = lambda: [via]  # noqa: E731
        else:
            targets = lambda: list(via)  # noqa: E731
        deadline = time.monotonic() + timeout
        i, last = 0, None
        while time.monotonic() < deadline:
            nodes = targets()
            if nodes:
                n = nodes[i % len(nodes)]
                i += 1
                try:
                    return n.call(*args, timeout=attempt_timeout)
                except RespError as e:
                    if e.code not in ("TRYAGAIN", "NOQUORUM"):
                        raise
                    last = e
                except (OSError, ProtocolError) as e:
                    last = e
            time.sleep(interval)
        raise WaitTimeout("write %r not acknowledged within %.0fs; last: %r"
                          % (args, timeout, last))

    # -- teardown and logs --------------------------------------------------------

    def all_nodes(self):
        return self.coordinators + self.daemons

    def teardown(self):
        """Stops fake daemons, kills every process by pid; returns problems
        (crashes, sanitizer reports)."""
        for f in self.fakes:
            f._stop.set()
        problems = []
        for n in self.all_nodes():
            problems += n.teardown()
        for f in self.fakes:
            if f._thread:
                f._thread.join(timeout=5)
            problems += ["fake daemon %s: unexpected reply %s" % (f.id, e)
                         for e in f.errors[:3]]
        return problems

    def log_report(self, lines=40):
        """The tail of every log of every node, with its path."""
        out = []
        for n in self.all_nodes():
            for i, p in enumerate(n.logs):
                out.append("==== %s (%s %s) %s\n%s" % (n.name, n.kind, n.addr, p,
                                                     n.log_tail(lines, i)))
        return "\n".join(out)


def run_cli(*args, timeout=30):
    """Runs `keel ARGS...`; returns (exit status, stdout, stderr) as text."""
    p = subprocess.run([KEEL_BIN] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def space_text(name, partitions=1, tolerate=0):
    return ("space %s\nkey k\nattributes v\ncreate %d partitions\ntolerate %d failures\n"
            % (name, partitions, tolerate))


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(1, -(-len(s) * p // 100))
    return s[int(k) - 1]
