"""Clean shutdown and restart of `keel standalone`: everything written comes
back (objects, spaces, indexes, settings) after SIGTERM, SIGINT or SIGHUP;
daemon mode writes its pid and log files and stops on SIGTERM through the
pid; start-up errors (a data dir or port already in use, bad flags, an
unusable data dir) exit 1 with a message."""

import os
import signal
import subprocess
import threading
import time

import pytest

import keel
from conftest import (HOST, KEEL_BIN, PHONEBOOK, STOP_TIMEOUT, ConnectionClosed, encode,
                      free_port, ping_once, wait_for)

TYPED = "space typed\nkey k\nattributes s, int i, float f\nsubspace i, f\ncreate 3 partitions\n"


def write_everything(server, raw):
    c = raw(server)
    assert c.cmd("SPACE.ADD", PHONEBOOK) == "OK"
    assert c.cmd("SPACE.ADD", TYPED) == "OK"
    assert c.cmd("SPACE.ADD", "space gone\nkey k\nattributes v") == "OK"
    cmds = []
    for i in range(300):
        cmds.append(("PUT", "phonebook", "user%03d" % i, "first", "F%d" % (i % 7),
                     "last", "L%d" % i, "phone", str(6075550000 + i)))
        cmds.append(("PUT", "typed", "t%03d" % i, "s", "x" * (i % 50), "i", str(i * 1000 - 7),
                     "f", repr(i / 7)))
    cmds.append(("PUT", "gone", "g", "v", "1"))
    assert all(r == "OK" for r in c.pipeline(cmds))
    for i in range(0, 300, 10):
        assert c.cmd("DEL", "phonebook", "user%03d" % i) == 1
    for _ in range(25):
        c.cmd("ADD", "typed", "t001", "i", "3")
    assert c.cmd("CPUT", "phonebook", "user001", "IF", "last", "L1", "SET", "last", "Changed") == "OK"
    assert c.cmd("SPACE.DROP", "gone") == "OK"
    assert c.cmd("CLUSTER.CONFIG", "SET", "reprotect_delay_s", "17") == "OK"
    c.close()


def read_everything(server, raw):
    """Every visible piece of state, as a comparable value."""
    c = raw(server)
    out = {"list": c.cmd("SPACE.LIST"),
           "config": [c.cmd("CLUSTER.CONFIG", "GET", n) for n in
                      ("heartbeat_ms", "ping_timeout_ms", "reprotect_delay_s", "log_retention")]}
    for sp in out["list"]:
        out["describe " + sp.decode()] = c.cmd("SPACE.DESCRIBE", sp)
        out["all " + sp.decode()] = sorted(c.cmd("SEARCH", sp))
    out["gets"] = c.pipeline([("GET", "phonebook", "user%03d" % i) for i in range(300)]
                             + [("GET", "typed", "t%03d" % i) for i in range(300)])
    out["searches"] = [
        sorted(c.cmd("SEARCH", "phonebook", "first", "=", "F3")),
        sorted(c.cmd("SEARCH", "phonebook", "phone", ">=", "6075550100", "phone", "<", "6075550150")),
        sorted(c.cmd("SEARCH", "typed", "i", "<", "5000")),
        sorted(c.cmd("SEARCH", "typed", "f", ">", "40.5")),
        sorted(c.cmd("SEARCH", "typed", "s", "=", "xxxxx")),
        c.cmd("COUNT", "phonebook"), c.cmd("COUNT", "typed", "i", ">", "0"),
    ]
    c.close()
    return out


def check_written_state(state):
    """What write_everything must have left, checked from first principles
    (so a restart that loses everything cannot compare equal to itself)."""
    assert state["list"] == [b"phonebook", b"typed"]
    assert state["config"][2] == b"17"
    assert state["searches"][5] == 270
    gets = state["gets"]
    assert gets[0] is None and gets[10] is None
    assert gets[1] == [b"first", b"F1", b"last", b"Changed", b"phone", 6075550001]
    assert gets[2] == [b"first", b"F2", b"last", b"L2", b"phone", 6075550002]
    assert gets[300 + 1][3] == 1000 - 7 + 75
    assert gets[300 + 299][:5] == [b"s", b"x" * 49, b"i", 298993, b"f"]
    assert float(gets[300 + 299][5]) == 299 / 7


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_restart_after_signal_keeps_everything(server, raw, sig):
    write_everything(server, raw)
    before = read_everything(server, raw)
    check_written_state(before)
    server.stop(sig)
    assert server.proc.returncode == 0
    server.start()
    after = read_everything(server, raw)
    assert after == before
    # and the restarted server takes writes that survive another restart
    c = raw(server)
    assert c.cmd("PUT", "phonebook", "late", "first", "Late") == "OK"
    assert c.cmd("SPACE.ADD", "space later\nkey k") == "OK"
    c.close()
    server.restart()
    c = raw(server)
    assert c.cmd("GET", "phonebook", "late") == [b"first", b"Late", b"last", b"", b"phone", 0]
    assert c.cmd("SPACE.LIST") == [b"phonebook", b"typed", b"later"]
    assert sorted(c.cmd("SEARCH", "typed", "i", "<", "5000")) == before["searches"][2]


def test_restart_with_sync_always_and_none(server, raw):
    for mode in ("always", "none"):
        server.restart(["--sync", mode])
        c = raw(server)
        if mode == "always":
            assert c.cmd("SPACE.ADD", PHONEBOOK) == "OK"
        assert c.cmd("PUT", "phonebook", "m-" + mode, "phone", "7") == "OK"
        c.close()
        server.restart()
        c = raw(server)
        assert c.cmd("GET", "phonebook", "m-" + mode)[5] == 7
        c.close()
    c = raw(server)
    assert c.cmd("COUNT", "phonebook") == 2


def test_sigterm_finishes_in_flight_requests(server, raw):
    """SIGTERM while a pipeline of writes is being served: every write that
    was acknowledged is there after the restart, and the replies that came
    back are a prefix of the requests (none skipped)."""
    c = raw(server)
    assert c.cmd("SPACE.ADD", PHONEBOOK) == "OK"
    n = 3000
    c.send(b"".join(encode("PUT", "phonebook", "f%05d" % i, "phone", str(i)) for i in range(n)))
    assert c.reply() == "OK"
    server.proc.send_signal(signal.SIGTERM)
    acked = 1
    try:
        while acked < n:
            r = c.reply()
            assert r == "OK", r
            acked += 1
    except (OSError, ConnectionClosed):
        pass  # the server closed the connection after its last reply
    assert server.proc.wait(timeout=STOP_TIMEOUT) == 0
    server._expected_exit = True
    server.start()
    c = raw(server)
    got = c.pipeline([("GET", "phonebook", "f%05d" % i) for i in range(acked)])
    missing = [i for i, g in enumerate(got) if g is None]
    assert not missing, "acknowledged writes lost: %s" % missing[:10]
    assert all(g[5] == i for i, g in enumerate(got))


def test_daemon_mode(tmp_path):
    data = tmp_path / "ddata"
    port = free_port()
    pidfile = data / "keel.pid"
    logfile = data / "keel.log"
    pid = None
    try:
        r = subprocess.run([KEEL_BIN, "standalone", "-l", HOST, "-p", str(port), "-D", str(data)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
        pid = int(pidfile.read_text().strip())
        assert pid > 1
        os.kill(pid, 0)  # alive
        assert wait_for(lambda: ping_once(HOST, port), 10)
        assert logfile.exists()
        with keel.Admin(HOST, port) as a:
            a.add_space(PHONEBOOK)
        with keel.Client(HOST, port) as c:
            c.put("phonebook", "d", {"first": "Daemon"})
        os.kill(pid, signal.SIGTERM)

        def gone():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        assert wait_for(gone, STOP_TIMEOUT), "daemon did not exit on SIGTERM"
        pid = None
        assert not ping_once(HOST, port, timeout=0.5)
        log = logfile.read_text(errors="replace")
        assert log.strip(), "daemon wrote nothing to keel.log"
        # The data is there for the next start (foreground this time).
        p = subprocess.Popen([KEEL_BIN, "standalone", "-f", "-l", HOST, "-p", str(port),
                              "-D", str(data)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert wait_for(lambda: ping_once(HOST, port), 10)
            with keel.Client(HOST, port) as c:
                assert c.get("phonebook", "d")["first"] == "Daemon"
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=STOP_TIMEOUT) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=STOP_TIMEOUT)
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_keel(args, timeout=20):
    return subprocess.run([KEEL_BIN] + args, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout)


def assert_startup_error(r):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.strip(), "no message on stderr"


def test_second_server_on_same_data_dir_fails(server, raw):
    c = raw(server)
    c.cmd("SPACE.ADD", PHONEBOOK)
    c.cmd("PUT", "phonebook", "x", "first", "First")
    r = run_keel(["standalone", "-f", "-l", HOST, "-p", str(free_port()), "-D", server.data_dir])
    assert_startup_error(r)
    assert c.cmd("GET", "phonebook", "x")[1] == b"First"
    assert server.alive()


def test_second_server_on_same_port_fails(server, raw, tmp_path):
    r = run_keel(["standalone", "-f", "-l", HOST, "-p", str(server.port),
                  "-D", str(tmp_path / "other")])
    assert_startup_error(r)
    assert raw(server).cmd("PING") == "PONG"


def test_startup_errors(tmp_path):
    """Start-up failures exit 1 with a message; command-line usage errors
    exit 2 with a message (the CLI's convention too). Neither serves."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    port = str(free_port())
    d = str(tmp_path / "d")
    cases = [
        (1, ["standalone", "-f", "-p", port, "-D", str(blocker / "data")]),  # unusable data dir
        (1, ["standalone", "-f", "-p", port, "-D", str(blocker)]),
        (1, ["standalone", "-f", "-p", port, "-D", d, "-l", "not-an-address"]),
        (2, ["standalone", "-f", "-p", port, "-D", d, "--no-such-flag"]),
        (2, ["standalone", "-f", "-p", "notaport", "-D", d]),
        (2, ["standalone", "-f", "-p", "70000", "-D", d]),
        (2, ["standalone", "-f", "-p", port, "-D", d, "--sync", "sometimes"]),
        (2, ["standalone", "-f", "-p", port, "-D", d, "--max-connections", "zero"]),
    ]
    for status, args in cases:
        r = run_keel(args)
        assert r.returncode == status, (args, r.returncode, r.stderr)
        assert r.stderr.strip(), "no message on stderr"
        assert not ping_once(HOST, int(port), timeout=0.2)
    # A port already taken must not leave a new data directory behind.
    assert not (tmp_path / "d").exists()


def test_restart_on_same_port_right_away(server, raw):
    """A restart binds the same port at once even with connections that were
    open at shutdown (SO_REUSEADDR; no TIME_WAIT failure)."""
    port = server.port
    conns = [raw(server) for _ in range(5)]
    for c in conns:
        assert c.cmd("PING") == "PONG"
    for _ in range(3):
        server.restart()
        assert server.port == port
        assert raw(server).cmd("PING") == "PONG"


def test_stop_while_clients_are_busy(server):
    """SIGTERM while several clients write: the server exits 0 within the
    bound and every client sees either success or a connection error."""
    server.add_phonebook()
    stop = threading.Event()
    results = {"ok": 0, "conn": 0, "other": []}
    lock = threading.Lock()

    def work(t):
        c = keel.Client(server.host, server.port, timeout=5)
        i = 0
        while not stop.is_set() and i < 100000:
            try:
                c.put("phonebook", "b%d-%d" % (t, i), {"phone": i})
                with lock:
                    results["ok"] += 1
            except keel.KeelError as e:
                with lock:
                    if e.code == "CONNECTION":
                        results["conn"] += 1
                    else:
                        results["other"].append(e)
                break
            i += 1
        c.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    time.sleep(0.5)
    server.stop()
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads)
    assert not results["other"], results["other"][:3]
    assert results["ok"] > 0
