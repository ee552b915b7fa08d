"""Hostile and careless clients: garbage bytes, broken limits, too many
connections, half-sent requests, many clients at once, a client that never
reads. In every case the offending connection gets an error (and is closed
where the protocol says so), and other clients and the data are untouched.

Every loop here is bounded in count and every wait by a socket timeout."""

import random
import socket
import threading
import time

import pytest

from conftest import PHONEBOOK, ConnectionClosed, Err, encode, wait_for


def seed_data(c):
    assert c.cmd("SPACE.ADD", PHONEBOOK) == "OK"
    for i in range(20):
        assert c.cmd("PUT", "phonebook", "u%d" % i, "first", "F%d" % i, "phone", str(i)) == "OK"


def state(c, skip_prefix=None):
    """Spaces, every phonebook object (except keys starting with
    skip_prefix) and the seeded objects one by one."""
    objs = c.cmd("SEARCH", "phonebook")
    if skip_prefix is not None:
        objs = [o for o in objs if not o[1].startswith(skip_prefix)]
    return (c.cmd("SPACE.LIST"), sorted(objs),
            [c.cmd("GET", "phonebook", "u%d" % i) for i in range(20)])


def assert_protocol_error_and_closed(conn, *fragments):
    """The connection's next reply is -ERR (holding every fragment) and then
    the server closes it."""
    r = conn.reply()
    assert isinstance(r, Err) and r.code == "ERR", r
    for f in fragments:
        assert f in r, (r, f)
    assert conn.is_closed(), "connection still open after %r" % r
    return r


MALFORMED = [
    (b"*abc\r\n", "Protocol error"),
    (b"*2\r\n+foo\r\n", "Protocol error"),
    (b"*2\r\n$3\r\nGET\r\n:12\r\n", "Protocol error"),
    (b"*1\r\n$x\r\n", "Protocol error"),
    (b"*1\r\n$-5\r\n", "Protocol error"),
    (b"*1\r\n$3\r\nabcdef\r\n", "Protocol error"),
    (b"*1\r\n$4\r\nPING\n\n", "Protocol error"),
    (b"ECHO \"unbalanced\r\n", "Protocol error"),
    (b"ECHO 'unbalanced\r\n", "Protocol error"),
    (b"ECHO \"closed\"glued\r\n", "Protocol error"),
]


@pytest.mark.parametrize("data,frag", MALFORMED, ids=[m[0].decode("latin-1") for m in MALFORMED])
def test_malformed_requests(server, raw, data, frag):
    good = raw(server)
    seed_data(good)
    before = state(good)
    bad = raw(server)
    # A good request first: it is answered before the error.
    bad.send(encode("PING", "first") + data)
    assert bad.reply() == b"first"
    assert_protocol_error_and_closed(bad, frag)
    assert state(good) == before
    assert raw(server).cmd("PING") == "PONG"


def test_random_garbage_in_multibulk_mode(server, raw):
    good = raw(server)
    seed_data(good)
    before = state(good)
    rng = random.Random(20240607)
    non_digits = [b for b in range(256) if b not in b"0123456789-+\r\n"]
    for _ in range(16):
        bad = raw(server, timeout=5)
        # The count line ends at the first CRLF (there is always one).
        junk = b"*" + bytes([rng.choice(non_digits)]) + rng.randbytes(rng.randint(0, 3000)) \
            + b"\r\n"
        bad.send(junk)
        assert_protocol_error_and_closed(bad, "Protocol error")
        bad.close()
    assert state(good) == before


def test_random_garbage_inline_and_binary_args(server, raw):
    """Random bytes as inline lines (without quotes, so they stay valid inline
    requests) and well-formed frames with random binary arguments: every
    request gets exactly one reply, in order, the connection stays open, the
    server stays up and the seeded data is unchanged."""
    good = raw(server)
    seed_data(good)
    before = state(good, skip_prefix=b"rnd")
    rng = random.Random(99)
    for round_ in range(12):
        bad = raw(server, timeout=5)
        chunks = []
        for _ in range(rng.randint(1, 60)):
            if rng.random() < 0.4:
                line = rng.randbytes(rng.randint(1, 200))
                for ch in (b"\n", b"\r", b'"', b"'"):
                    line = line.replace(ch, b" ")
                chunks.append(b"x" + line + b"\r\n")
            else:
                cmd = rng.choice([b"GET", b"PUT", b"DEL", b"SEARCH", b"COUNT", b"ADD", b"CPUT",
                                  b"ECHO", b"PING", b"SPACE.DESCRIBE", b"INFO", b"get", b"Put"])
                space = rng.choice([b"phonebook", rng.randbytes(5)])
                args = [cmd, space, b"rnd" + rng.randbytes(rng.randint(0, 20))]
                args += [rng.randbytes(rng.randint(0, 50)) for _ in range(rng.randint(0, 8))]
                chunks.append(encode(*args))
        bad.send(b"".join(chunks) + encode("PING", "end-marker"))
        for i, chunk in enumerate(chunks):
            r = bad.reply()
            assert not (isinstance(r, Err) and "Protocol error" in r), (round_, i, chunk, r)
            if chunk.startswith(b"x"):
                assert isinstance(r, Err) and r.code == "ERR", (round_, i, chunk, r)
        assert bad.reply() == b"end-marker"
        bad.close()
    assert state(good, skip_prefix=b"rnd") == before
    assert good.cmd("PING") == "PONG"


def request_of_size(size, space="big"):
    """PUT space k a0 v0 a1 v1 ... encoded in exactly size bytes (values of
    at most 1000 bytes)."""
    n = 1
    while True:
        args = ["PUT", space, "k"]
        for i in range(n):
            args += ["a%d" % i, ""]
        base = len(encode(*args))
        room = size - base
        if room <= 1000 * n:
            break
        n += 1
    # Fill the values; each value's "$len" header grows with its length.
    vals = [0] * n
    for i in range(n):
        vals[i] = min(1000, room)
        room -= vals[i]
    args = ["PUT", space, "k"]
    for i in range(n):
        args += ["a%d" % i, "v" * vals[i]]
    data = encode(*args)
    # correct for header digits: shrink the last non-empty value
    while len(data) > size:
        j = max(i for i in range(n) if vals[i] > 0)
        vals[j] -= 1
        args[4 + 2 * j] = "v" * vals[j]
        data = encode(*args)
    assert len(data) == size, (len(data), size)
    return data


def test_limits(server, raw):
    server.restart(["--max-bulk-bytes", "1024", "--max-args", "32",
                    "--max-request-bytes", "4096", "--max-key-bytes", "16"])
    good = raw(server)
    seed_data(good)
    assert good.cmd("SPACE.ADD", "space big\nkey k\nattributes " +
                    ", ".join("a%d" % i for i in range(12))) == "OK"
    before = state(good)

    # Exactly at each limit: accepted.
    c = raw(server)
    assert c.cmd("ECHO", "x" * 1024) == b"x" * 1024
    preds = []
    for i in range(10):
        preds += ["a%d" % i, ">=", ""]
    assert len(["SEARCH", "big"] + preds) == 32
    assert c.cmd("SEARCH", "big", *preds) == []
    c.send(request_of_size(4096))
    assert c.reply() == "OK"
    assert c.cmd("DEL", "big", "k") == 1
    assert c.cmd("PUT", "phonebook", "k" * 16, "first", "x") == "OK"
    assert c.cmd("DEL", "phonebook", "k" * 16) == 1
    assert state(good) == before

    # One past each limit: -ERR naming the limit, then the close.
    c = raw(server)
    c.send(encode("ECHO", "x" * 1025))
    assert_protocol_error_and_closed(c, "max_bulk_bytes (1024)")
    c = raw(server)
    c.send(encode("SEARCH", "big", "a11", "=", "", *preds))
    assert_protocol_error_and_closed(c, "max_args (32)")
    c = raw(server)
    c.send(request_of_size(4097))
    assert_protocol_error_and_closed(c, "max_request_bytes (4096)")
    # inline lines count against the request size too
    c = raw(server)
    c.send(b"ECHO " + b"z" * 5000 + b"\r\n")
    assert_protocol_error_and_closed(c)
    # the key limit answers an error and keeps the connection
    c = raw(server)
    r = c.cmd("PUT", "phonebook", "k" * 17, "first", "x")
    assert r == "ERR key exceeds max_key_bytes (16)"
    assert c.cmd("PING") == "PONG"
    assert state(good) == before
    assert good.cmd("COUNT", "big") == 0


def test_huge_announced_bulk_is_refused_before_payload(server, raw):
    good = raw(server)
    seed_data(good)
    c = raw(server)
    # 100 MB announced, nothing sent after the header: the default
    # max_bulk_bytes (16 MiB) is broken by the header alone.
    c.send(b"*3\r\n$3\r\nPUT\r\n$9\r\nphonebook\r\n$100000000\r\n")
    assert_protocol_error_and_closed(c, "max_bulk_bytes (16777216)")
    c = raw(server)
    c.send(b"*100000\r\n")
    assert_protocol_error_and_closed(c, "max_args (4096)")
    assert good.cmd("GET", "phonebook", "u3")[1] == b"F3"


def test_max_connections(server, raw):
    server.restart(["--max-connections", "3"])

    def open_three():
        # The start-up probe's connection may not be reaped yet: retry.
        cs = []
        try:
            for i in range(3):
                c = raw(server, timeout=2)
                cs.append(c)
                if c.cmd("PING", str(i)) != str(i).encode():
                    raise ConnectionClosed()
            return cs
        except (ConnectionClosed, OSError):
            for c in cs:
                c.close()
            return None
    conns = wait_for(open_three, 5.0, interval=0.1)
    assert conns, "could not open 3 connections under --max-connections 3"
    extra = raw(server)
    r = extra.reply()
    assert r == "ERR max_connections (3) reached"
    assert extra.is_closed()
    for c in conns:
        assert c.cmd("PING") == "PONG"
    # A slot freed by a client that leaves is usable again (the server
    # notices the close asynchronously: poll, bounded).
    conns[0].close()

    def fresh_ok():
        c = raw(server, timeout=2)
        try:
            return c.cmd("PING") == "PONG"
        except (ConnectionClosed, OSError):
            return False
        finally:
            c.close()
    assert wait_for(fresh_ok, 5.0, interval=0.1)
    assert conns[1].cmd("PING") == "PONG"


def test_half_sent_request_then_close(server, raw):
    good = raw(server)
    seed_data(good)
    before = state(good)
    for part in (b"*5\r\n$3\r\nPUT\r\n$9\r\nphonebook\r\n$2\r\nu1\r\n$5\r\nfirst\r\n$4\r\nHA",
                 b"*3\r\n$3\r\nDEL\r\n$9\r\nphone", b"PUT phonebook u2 first", b"*"):
        c = raw(server)
        c.send(part)
        time.sleep(0.1)
        c.close()
    assert state(good) == before
    assert good.cmd("PING") == "PONG"


def test_half_sent_request_then_rest(server, raw):
    good = raw(server)
    seed_data(good)
    c = raw(server)
    req = encode("PUT", "phonebook", "u1", "first", "Completed") + encode("GET", "phonebook", "u1")
    for cut in (5, 17, 40, len(req) - 1):
        c.send(req[:cut])
        time.sleep(0.05)
        # another client is served while this one is mid-request
        assert good.cmd("GET", "phonebook", "u2")[1] == b"F2"
        c.send(req[cut:])
        assert c.reply() == "OK"
        assert c.reply() == [b"first", b"Completed", b"last", b"", b"phone", 1]


def test_many_clients_at_once(server):
    server.add_phonebook()
    nthreads, nops = 32, 40
    errors = []
    start = threading.Barrier(nthreads, timeout=30)

    def work(t):
        try:
            with server.client(timeout=20) as c:
                start.wait()
                for i in range(nops):
                    k = "m%d-%d" % (t, i)
                    c.put("phonebook", k, {"first": "T%d" % t, "phone": i})
                    assert c.get("phonebook", k) == {"first": "T%d" % t, "last": "", "phone": i}
                c.put("phonebook", "counter")
                for _ in range(10):
                    c.atomic_add("phonebook", "counter", {"phone": 1})
        except Exception as e:  # collected and reported below
            errors.append((t, e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[:3]
    c = server.client()
    assert c.count("phonebook") == nthreads * nops + 1
    assert c.get("phonebook", "counter")["phone"] == nthreads * 10
    for t in (0, nthreads - 1):
        assert c.count("phonebook", {"first": "T%d" % t}) == nops


def test_client_that_never_reads_does_not_block_others(server, raw):
    server.add_phonebook()
    good = raw(server)
    big = "v" * 100000
    assert good.cmd("PUT", "phonebook", "big", "first", big) == "OK"
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((server.host, server.port))
    slow.settimeout(10)
    # 500 GETs of a 100 KB object (50 MB of replies), never read. The send
    # blocks once the server stops reading from this client; a thread does
    # it so the test goes on.
    req = encode("GET", "phonebook", "big") * 500
    sent = []

    def pump():
        try:
            slow.sendall(req)
            sent.append(len(req))
        except OSError:
            sent.append(-1)

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    time.sleep(0.5)
    for i in range(50):
        assert good.cmd("PUT", "phonebook", "g%d" % i, "phone", str(i)) == "OK"
        assert good.cmd("GET", "phonebook", "g%d" % i)[5] == i
    other = raw(server)
    assert other.cmd("COUNT", "phonebook") == 51
    slow.close()
    th.join(timeout=15)
    assert not th.is_alive()
    assert good.cmd("GET", "phonebook", "big")[1] == big.encode()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def test_client_that_never_reads_cannot_grow_server_memory_without_bound(server, raw):
    """300 pipelined GETs of a 1 MB object in one small write (10 KB), never
    read: the server must stop producing replies for that client once its
    output backlog is large (it has a 32 MB high-water mark), not buffer
    300 MB. The bound asserted is generous (150 MB over the start)."""
    server.add_phonebook()
    good = raw(server)
    assert good.cmd("PUT", "phonebook", "big", "first", "v" * 1000000) == "OK"
    base = rss_kb(server.proc.pid)
    slow = raw(server)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.send(encode("GET", "phonebook", "big") * 300)
    # Let the server work through what it read (bounded by the PINGs below:
    # each is answered after the server returned to its loop).
    for _ in range(20):
        assert good.cmd("PING") == "PONG"
        time.sleep(0.05)
    grown = rss_kb(server.proc.pid) - base
    slow.close()
    assert grown < 150 * 1024, "server RSS grew by %d MB for one client that does not read" \
        % (grown // 1024)
