"""RESP2 codec and one blocking connection, for the keel Python client.

Requests go out as arrays of bulk strings; replies are read back as Python
values:

    +OK            -> Status('OK')           (a str subclass)
    -CODE message  -> KeelError('CODE', 'message')   (returned, not raised,
                      so an error inside an array stays in place)
    :42            -> 42
    $3 abc         -> b'abc'
    $-1 / *-1      -> None
    *2 ...         -> [..., ...]

Invariants:
  1. A Connection either holds a socket whose byte stream is aligned on a
     reply boundary, or holds no socket. Any I/O error, timeout, EOF or
     malformed reply closes the socket (the stream position is unknown after
     that) and raises KeelError('CONNECTION', ...). The next call connects
     again; a request is never re-sent on its own, so a write is never applied
     twice behind the caller's back.
  2. A CONNECTION error raised before any byte of the request was written
     (the connection could not be made, or a pooled socket was found closed
     by the server before sending) has .unsent True: the server cannot have
     seen the request. Any other CONNECTION error has .unsent False: the
     request may or may not have reached the server.
  3. Nothing is trusted from the server: lengths are checked against
     MAX_REPLY_BULK and nesting against MAX_REPLY_DEPTH before anything is
     buffered or recursed into.
  4. A Connection with a prelude (e.g. CLIENT.REDIRECT ON) sends it on every
     new socket, in the same write as and ahead of the first request, before
     anything else on that socket; so every request on the socket is
     answered under the prelude's settings (or the server refused the
     prelude: its replies are kept in .prelude_replies).
"""

import select
import socket
import threading

MAX_REPLY_BULK = 512 * 1024 * 1024
MAX_REPLY_DEPTH = 16
_READ_CHUNK = 65536


class KeelError(Exception):
    """An error reply from the server, or a connection problem.

    .code is the server's code word ('ERR', 'NOSPACE', 'NOATTR', 'WRONGTYPE',
    'CMPFAIL', 'NOTFOUND', 'OVERFLOW', 'IOERR', ...) or 'CONNECTION' when the
    server could not be reached or the connection broke. .message is the text
    after the code word. .unsent is True only for a CONNECTION error raised
    before the request was sent (so it cannot have been applied).
    """

    def __init__(self, code, message="", unsent=False):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.unsent = unsent

    def __str__(self):
        return "%s %s" % (self.code, self.message) if self.message else self.code

    def __repr__(self):
        return "KeelError(%r, %r)" % (self.code, self.message)


class Status(str):
    """A RESP simple string reply (+OK, +PONG)."""


def error_from_line(text):
    """Splits an error reply line ('NOSPACE no such space ...') into a KeelError."""
    code, _, message = text.partition(" ")
    return KeelError(code or "ERR", message)


def to_bytes(value):
    """Encodes one request argument: bytes as they are, str as UTF-8 (lone
    surrogates from surrogateescape become the original bytes again), int and
    float as the text the server parses (repr of a float is the shortest text
    that reads back as the same double)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(value).encode("ascii")
    if isinstance(value, float):
        return repr(value).encode("ascii")
    raise TypeError("keel values must be str, bytes, int or float, not %s"
                    % type(value).__name__)


def encode_command(args):
    """One request as a RESP2 array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = to_bytes(a)
        parts.append(b"$%d\r\n" % len(b))
        parts.append(b)
        parts.append(b"\r\n")
    return b"".join(parts)


class Connection:
    """One blocking TCP connection speaking RESP2. Safe to share between
    threads (calls are serialised by a lock).

    With check_before_send set, a pooled socket is first checked (without
    blocking) for an end of stream or stray bytes from the server; such a
    socket is replaced by a new connection before the request is written, so
    a server that went away since the last call gives an .unsent error.

    prelude (a tuple of commands) is sent first on every new socket, in the
    same write as the request; its replies (errors included, as values) are
    kept in .prelude_replies and never returned by call."""

    def __init__(self, host, port, timeout=10.0, prelude=()):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.check_before_send = False
        self.prelude = tuple(tuple(c) for c in prelude)
        self.prelude_replies = []
        self._sock = None
        self._buf = bytearray()
        self._pos = 0
        self._call_timeout = timeout
        self._lock = threading.Lock()

    # -- connection management ------------------------------------------------

    def _connect(self, timeout):
        try:
            s = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as e:
            raise KeelError("CONNECTION", "cannot connect to %s:%s: %s"
                            % (self.host, self.port, e), unsent=True) from None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = s
        self._buf = bytearray()
        self._pos = 0

    def close(self):
        with self._lock:
            self._drop()

    def _drop(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._buf = bytearray()
        self._pos = 0

    def _fail(self, what):
        self._drop()
        raise KeelError("CONNECTION", what)

    def _stale(self):
        """True if the pooled socket has an end of stream, an error or
        unexpected bytes waiting (checked without blocking)."""
        try:
            p = select.poll()
            p.register(self._sock, select.POLLIN)
            if not p.poll(0):
                return False
        except (OSError, ValueError):
            return True
        return True  # an end of stream, an error, or bytes nobody asked for

    # -- requests ---------------------------------------------------------------

    def call(self, *args, timeout=None):
        """Sends one command and returns its reply (error replies are
        returned as KeelError values, not raised). timeout (seconds) replaces
        the connection's timeout for this call only."""
        return self.call_many([args], timeout)[0]

    def call_many(self, commands, timeout=None):
        """Sends every command in one write (pipelining) and returns their
        replies in order."""
        data = b"".join(encode_command(c) for c in commands)
        t = self.timeout if timeout is None else timeout
        with self._lock:
            if self._sock is not None and self.check_before_send and self._stale():
                self._drop()
            pre = ()
            if self._sock is None:
                self._connect(t)
                pre = self.prelude
                if pre:
                    data = b"".join(encode_command(c) for c in pre) + data
            self._call_timeout = t
            try:
                self._sock.settimeout(t)
                self._sock.sendall(data)
            except OSError as e:
                self._fail("send to %s:%s failed: %s" % (self.host, self.port, e))
            if pre:
                self.prelude_replies = [self._read_reply(0) for _ in pre]
            return [self._read_reply(0) for _ in commands]

    # -- reply parsing ----------------------------------------------------------

    def _fill(self):
        if self._pos > 0 and self._pos == len(self._buf):
            self._buf = bytearray()
            self._pos = 0
        elif self._pos > _READ_CHUNK:
            del self._buf[:self._pos]
            self._pos = 0
        try:
            chunk = self._sock.recv(_READ_CHUNK)
        except socket.timeout:
            self._fail("no reply from %s:%s within %ss"
                       % (self.host, self.port, self._call_timeout))
        except OSError as e:
            self._fail("receive from %s:%s failed: %s" % (self.host, self.port, e))
        if not chunk:
            self._fail("connection closed by %s:%s" % (self.host, self.port))
        self._buf += chunk

    def _readline(self):
        while True:
            i = self._buf.find(b"\r\n", self._pos)
            if i >= 0:
                line = bytes(self._buf[self._pos:i])
                self._pos = i + 2
                return line
            if len(self._buf) - self._pos > 65536:
                self._fail("malformed reply: line too long")
            self._fill()

    def _readexact(self, n):
        while len(self._buf) - self._pos < n:
            self._fill()
        data = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        return data

    def _read_int(self, text):
        try:
            return int(text)
        except ValueError:
            self._fail("malformed reply: bad number %r" % text[:40])

    def _read_reply(self, depth):
        if depth > MAX_REPLY_DEPTH:
            self._fail("malformed reply: nested too deep")
        line = self._readline()
        if not line:
            self._fail("malformed reply: empty line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return Status(rest.decode("utf-8", "replace"))
        if kind == b"-":
            return error_from_line(rest.decode("utf-8", "replace"))
        if kind == b":":
            return self._read_int(rest)
        if kind == b"$":
            n = self._read_int(rest)
            if n == -1:
                return None
            if n < 0 or n > MAX_REPLY_BULK:
                self._fail("malformed reply: bulk length %d" % n)
            data = self._readexact(n + 2)
            if data[-2:] != b"\r\n":
                self._fail("malformed reply: bulk not ended by CRLF")
            return data[:-2]
        if kind == b"*":
            n = self._read_int(rest)
            if n == -1:
                return None
            if n < 0 or n > MAX_REPLY_BULK:
                self._fail("malformed reply: array length %d" % n)
            return [self._read_reply(depth + 1) for _ in range(n)]
        self._fail("malformed reply: unexpected type byte %r" % kind)
