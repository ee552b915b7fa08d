"""Fixtures for the end-to-end tests of `keel standalone`.

`server` (function scope) starts `keel standalone -f -l 127.0.0.1 -p PORT -D
DIR` on a free port with its data in the test's tmp dir, waits (at most
START_TIMEOUT seconds) until it answers PING, and yields a KeelServer. At
teardown the process is always gone: it is stopped with SIGTERM (a clean
shutdown must exit 0) and killed with SIGKILL if it does not exit in time.
A server that died on its own during the test, exited non-zero at teardown,
or printed a sanitizer report fails the test. Every server log is kept in
the tmp dir and attached to the report of a failed test.

`raw` is a fixture giving a factory: raw(server) opens a RawConn, a plain
socket with helpers to send bytes and read exactly one RESP reply, for
byte-level tests; every RawConn is closed at teardown. raw_connect(server)
does the same outside a fixture (the caller closes it).

Every wait here is bounded: process waits, socket reads (RAW_TIMEOUT) and
start-up polling all have deadlines.

The binary is $KEEL_BIN (the Makefile sets it), else <repo>/build/keel.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))

import keel  # noqa: E402

KEEL_BIN = os.environ.get("KEEL_BIN") or os.path.join(REPO, "build", "keel")
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
RAW_TIMEOUT = 10.0
START_ATTEMPTS = 4

PHONEBOOK = """space phonebook
key username
attributes first, last, int phone
subspace first, last, phone
create 8 partitions
tolerate 2 failures
"""

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ping_once(host, port, timeout=1.0):
    """True if a server at host:port answers +PONG to PING."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    return False
                data += chunk
            return data == b"+PONG\r\n"
    except OSError:
        return False


def wait_for(cond, timeout, interval=0.05, what="condition"):
    """Polls cond() until it is true or timeout seconds passed; returns the
    last value of cond() (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class ServerStartError(Exception):
    pass


class KeelServer:
    """One `keel standalone -f` process and what a test needs to drive it."""

    def __init__(self, tmp_path, extra_args=None):
        self.host = HOST
        self.port = None
        self.data_dir = str(tmp_path / "data")
        self.log_dir = tmp_path
        self.proc = None
        self.extra_args = list(extra_args or [])
        self.logs = []        # every log file written so far, in order
        self.runs = 0
        self.unexpected = []  # descriptions of exits nobody asked for
        self._clients = []

    # -- process control ----------------------------------------------------

    def argv(self, port, extra_args):
        return [KEEL_BIN, "standalone", "-f", "-l", self.host, "-p", str(port),
                "-D", self.data_dir] + list(extra_args)

    def start(self, extra_args=None, port=None):
        """Starts the server (it must not be running). Keeps the previous
        port when it can; a port that another process took is replaced by a
        fresh one (up to START_ATTEMPTS tries). Raises ServerStartError with
        the log when the server does not come up."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        if extra_args is not None:
            self.extra_args = list(extra_args)
        port = port or self.port or free_port()
        last = ""
        for _ in range(START_ATTEMPTS):
            rc, log = self._start_once(port)
            if rc is None:
                self._expected_exit = False
                return self
            last = "exit %s, log %s:\n%s" % (rc, self.logs[-1], log)
            if "address already in use" not in log.lower():
                break
            port = free_port()
        raise ServerStartError("keel standalone did not start: " + last)

    def _start_once(self, port):
        self.runs += 1
        log_path = str(self.log_dir / ("server-%d.log" % self.runs))
        self.logs.append(log_path)
        with open(log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.argv(port, self.extra_args),
                                         stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT)
        self.port = port
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.proc.returncode, self.read_log()
            if ping_once(self.host, port):
                if self.proc.poll() is None:
                    return None, ""
            time.sleep(0.02)
        self._kill()
        return "timeout (no PONG within %ss)" % START_TIMEOUT, self.read_log()

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _note_unexpected_exit(self):
        if self.proc is not None and self.proc.poll() is not None and not self._expected_exit:
            self.unexpected.append("server exited on its own with status %s (log %s)"
                                   % (self.proc.returncode, self.logs[-1]))

    def kill9(self):
        """SIGKILL, then wait (bounded) until the process is gone."""
        assert self.alive(), "kill9 on a server that is not running"
        self._expected_exit = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        return self.proc.returncode

    def shutdown(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig, waits (bounded) and returns the exit status."""
        assert self.alive(), "shutdown on a server that is not running"
        self._expected_exit = True
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError("server did not exit within %ss of signal %s"
                                 % (timeout, sig))

    def stop(self, sig=signal.SIGTERM):
        """Clean shutdown by sig (SIGTERM by default); asserts exit 0."""
        rc = self.shutdown(sig)
        assert rc == 0, "server exited %s on signal %s; log:\n%s" % (rc, sig, self.read_log())
        return rc

    def restart(self, extra_args=None):
        """Stops the server if it runs (SIGTERM, exit 0 asserted) and starts it
        again on the same data dir. extra_args=None keeps the previous extra
        arguments; a list replaces them ([] for none)."""
        if self.alive():
            self.stop()
        self._note_unexpected_exit()
        self._close_clients()
        return self.start(extra_args)

    _expected_exit = False

    # -- clients --------------------------------------------------------------

    def client(self, timeout=10.0):
        c = keel.Client(self.host, self.port, timeout=timeout)
        self._clients.append(c)
        return c

    def admin(self, timeout=10.0):
        a = keel.Admin(self.host, self.port, timeout=timeout)
        self._clients.append(a)
        return a

    def _close_clients(self):
        for c in self._clients:
            c.close()
        self._clients = []

    def add_phonebook(self):
        with self.admin() as a:
            a.add_space(PHONEBOOK)

    # -- logs -----------------------------------------------------------------

    def read_log(self, index=-1, limit=20000):
        try:
            with open(self.logs[index], "rb") as f:
                data = f.read()
        except (OSError, IndexError):
            return ""
        text = data.decode("utf-8", "replace")
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def all_logs(self):
        return "\n".join("== %s\n%s" % (p, self.read_log(i)) for i, p in enumerate(self.logs))

    # -- teardown -------------------------------------------------------------

    def teardown(self):
        """Stops the server whatever state it is in; returns a list of
        problems found (unexpected exits, unclean shutdown, sanitizer
        reports)."""
        self._close_clients()
        problems = []
        if self.proc is not None:
            if self.alive():
                self._expected_exit = True
                self.proc.send_signal(signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout=STOP_TIMEOUT)
                    if rc != 0:
                        problems.append("SIGTERM at teardown: exit status %s" % rc)
                except subprocess.TimeoutExpired:
                    self._kill()
                    problems.append("server did not exit within %ss of SIGTERM at teardown"
                                    % STOP_TIMEOUT)
            else:
                self._note_unexpected_exit()
        problems += self.unexpected
        for i, p in enumerate(self.logs):
            log = self.read_log(i, limit=10 ** 7)
            for mark in SANITIZER_MARKS:
                if mark in log:
                    problems.append("sanitizer report in %s" % p)
                    break
        return problems


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches every server log of a failed test to its report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for srv in getattr(item, "_keel_servers", []):
            rep.sections.append(("keel server log", srv.all_logs()))


def _make_server(request, tmp_path, extra_args=None):
    srv = KeelServer(tmp_path, extra_args)
    if not hasattr(request.node, "_keel_servers"):
        request.node._keel_servers = []
    request.node._keel_servers.append(srv)
    return srv


@pytest.fixture
def server(request, tmp_path):
    """A running `keel standalone -f` on a free port, data in tmp_path/data."""
    srv = _make_server(request, tmp_path)
    try:
        srv.start()
        yield srv
    finally:
        problems = srv.teardown()
    if problems:
        pytest.fail("keel server: " + "; ".join(problems) + "\n" + srv.all_logs(),
                    pytrace=False)


# -- raw RESP connections ----------------------------------------------------

class Err(str):
    """An error reply read by RawConn; .code is its first word."""

    @property
    def code(self):
        return self.split(" ", 1)[0]


class Simple(str):
    """A simple-string reply (+OK) read by RawConn."""


class ConnectionClosed(Exception):
    pass


def encode(*args):
    """A request as a RESP array of bulk strings (str args are UTF-8)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode("utf-8", "surrogateescape")
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class NeedMore(Exception):
    pass


def parse_reply(buf, pos):
    """Parses one RESP2 reply at buf[pos:]; returns (value, end offset) or
    raises NeedMore. Malformed input fails an assertion."""
    i = buf.find(b"\r\n", pos)
    if i < 0:
        raise NeedMore()
    line = buf[pos:i]
    t, rest = line[:1], line[1:]
    pos = i + 2
    if t == b"+":
        return Simple(rest.decode("utf-8", "replace")), pos
    if t == b"-":
        return Err(rest.decode("utf-8", "replace")), pos
    if t == b":":
        return int(rest), pos
    if t == b"$":
        n = int(rest)
        if n < 0:
            assert n == -1, line
            return None, pos
        if len(buf) < pos + n + 2:
            raise NeedMore()
        assert buf[pos + n:pos + n + 2] == b"\r\n", "bulk not ended by CRLF"
        return buf[pos:pos + n], pos + n + 2
    if t == b"*":
        n = int(rest)
        if n < 0:
            assert n == -1, line
            return None, pos
        out = []
        for _ in range(n):
            v, pos = parse_reply(buf, pos)
            out.append(v)
        return out, pos
    raise AssertionError("not a RESP reply: %r" % line)


class RawConn:
    """A plain socket to the server with RESP reading helpers.

    Replies decode as: +x -> Simple('x'), -x -> Err('x'), :n -> int,
    $n -> bytes, $-1 -> None, *n -> list, *-1 -> None."""

    def __init__(self, host, port, timeout=RAW_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def cmd(self, *args):
        """Sends one command and returns its reply."""
        self.send(encode(*args))
        return self.reply()

    def pipeline(self, commands):
        """Sends all commands in one write; returns the replies in order."""
        self.send(b"".join(encode(*c) for c in commands))
        return [self.reply() for _ in commands]

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("server closed the connection; unread bytes %r" % self.buf)
        self.buf += chunk

    def _next(self):
        """(value, length) of the first whole reply in buf, reading more
        bytes as needed (the socket timeout bounds each read)."""
        while True:
            try:
                return parse_reply(self.buf, 0)
            except NeedMore:
                self._fill()

    def reply(self):
        """Reads exactly one reply."""
        value, end = self._next()
        self.buf = self.buf[end:]
        return value

    def raw_reply(self):
        """Reads exactly one reply and returns its bytes as sent."""
        _, end = self._next()
        data, self.buf = self.buf[:end], self.buf[end:]
        return data

    def read_until_closed(self, limit=1 << 20):
        """Reads until the server closes the connection (bounded by the socket
        timeout and limit bytes); returns everything unread."""
        data = self.buf
        self.buf = b""
        while len(data) < limit:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data

    def is_closed(self, timeout=RAW_TIMEOUT):
        """True if the server closed the connection (EOF or reset) within
        timeout seconds with no further bytes."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(RAW_TIMEOUT)
        return chunk == b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def raw_connect(srv, timeout=RAW_TIMEOUT):
    """A RawConn to srv that the caller closes (the `raw` fixture closes
    its own at teardown)."""
    return RawConn(srv.host, srv.port, timeout)


@pytest.fixture
def raw():
    """raw(server) -> RawConn; all are closed at teardown."""
    conns = []

    def connect(srv, timeout=RAW_TIMEOUT):
        c = raw_connect(srv, timeout)
        conns.append(c)
        return c

    yield connect
    for c in conns:
        c.close()
