"""The `keel` command-line client end to end: every subcommand run as a
process ($KEEL_BIN) against a real `keel standalone`, checking its output,
its messages and its exit status (0 ok, 1 server error or not found, 2 usage
error, 3 cannot connect), and `keel shell` fed through a pipe and driven on a
pseudo-terminal.

The coordinator subcommands (`keel status`, `keel rm-coordinator`) and the
retrying of administrative commands after -TRYAGAIN run against
FakeCoordinator, a small RESP server in the test process that answers from a
script, so the CLI's side of the contract (docs/coordinator.md) is checked
without a Raft cluster."""

import json
import os
import pty
import re
import select
import socketserver
import subprocess
import threading
import time

import pytest

from conftest import HOST, KEEL_BIN, PHONEBOOK, free_port

RUN_TIMEOUT = 30


def run(args, input=None, env=None):
    """Runs keel with args; returns the CompletedProcess (text mode)."""
    return subprocess.run([KEEL_BIN] + list(args), input=input, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, env=env)


def cli(server, cmd, *args, input=None):
    """Runs `keel CMD -h HOST -p PORT ARGS...` against server."""
    return run([cmd, "-h", server.host, "-p", str(server.port)] + list(args), input=input)


def ok(p):
    """Asserts exit 0 and no diagnostics; returns stdout."""
    assert p.returncode == 0, "exit %d, stderr: %s" % (p.returncode, p.stderr)
    assert p.stderr == ""
    return p.stdout


def parse_blocks(text):
    """Search output -> list of {attr: value} dicts, one per block."""
    blocks = [b for b in text.strip("\n").split("\n\n") if b]
    out = []
    for b in blocks:
        d = {}
        for line in b.split("\n"):
            k, v = line.split(": ", 1)
            d[k] = v
        out.append(d)
    return out


@pytest.fixture
def pb(server):
    """The server with the phonebook space created through the CLI."""
    ok(cli(server, "add-space", "-e", PHONEBOOK))
    return server


def put_people(srv):
    ok(cli(srv, "put", "phonebook", "jsmith1", "first", "John", "last", "Smith",
           "phone", "6075551024"))
    ok(cli(srv, "put", "phonebook", "jd", "first", "Jane", "last", "Doe", "phone", "42"))
    ok(cli(srv, "put", "phonebook", "bob", "first", "Bob", "last", "van Dyke",
           "phone", "7"))


# -- usage and connection --------------------------------------------------------

def test_help_and_usage_errors():
    p = run(["put", "--help"])
    assert p.returncode == 0
    assert "usage: keel put [-h HOST] [-p PORT] SPACE KEY [ATTR VALUE]..." in p.stdout
    assert "--port" in p.stdout

    p = run(["--help"])
    both = p.stdout + p.stderr
    for name in ("put", "get", "del", "search", "count", "add-space", "rm-space",
                 "list-spaces", "shell", "status", "rm-coordinator"):
        assert "keel %s [-h HOST] [-p PORT]" % name in both

    # Coordinator subcommands default to the coordinator port.
    p = run(["status", "--help"])
    assert p.returncode == 0
    assert "usage: keel status [-h HOST] [-p PORT] [--json] [--stale]" in p.stdout
    assert "(default 1982)" in p.stdout and "--stale" in p.stdout
    assert "(default 1982)" in run(["rm-coordinator", "--help"]).stdout
    assert "(default 2012)" in run(["get", "--help"]).stdout

    for args, why in [
        (["get", "phonebook"], "needs exactly SPACE and KEY"),
        (["get", "a", "b", "c"], "needs exactly SPACE and KEY"),
        (["put", "phonebook"], "needs SPACE and KEY"),
        (["put", "phonebook", "k", "first"], "attribute 'first' has no value"),
        (["get", "-p", "0", "a", "b"], "bad port '0'"),
        (["get", "-p", "http", "a", "b"], "bad port 'http'"),
        (["get", "-p"], "needs a port"),
        (["get", "--bogus", "a", "b"], "unknown option '--bogus'"),
        (["search", "phonebook", "phone", "==", "1"], "unknown operator '=='"),
        (["search", "phonebook", "phone", ">"], "incomplete"),
        (["search", "phonebook", "--limit", "x"], "--limit needs a number"),
        (["count", "phonebook", "--limit", "1"], "incomplete"),
        (["add-space", "-e", "space x key k", "file"], "not both"),
        (["rm-space"], "needs exactly one NAME"),
        (["list-spaces", "extra"], "takes no arguments"),
        (["shell", "extra"], "takes no arguments"),
        (["status", "extra"], "takes no arguments"),
        (["status", "--limit", "1"], "unknown option '--limit'"),
        (["get", "--json", "a", "b"], "unknown option '--json'"),
        (["rm-coordinator"], "needs exactly one ID"),
        (["rm-coordinator", "1", "2"], "needs exactly one ID"),
        (["rm-coordinator", "abc"], "bad coordinator id 'abc'"),
        (["rm-coordinator", "0"], "bad coordinator id '0'"),
        (["rm-coordinator", "-p", "1982"], "needs exactly one ID"),
    ]:
        # Usage errors are found before connecting: no server is needed.
        p = run(args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert why in p.stderr, (args, p.stderr)
        assert "usage: keel %s" % args[0] in p.stderr
        assert p.stdout == ""


def test_cannot_connect_exits_3():
    port = free_port()
    for cmd in (["get", "kv", "k"], ["list-spaces"], ["shell"], ["put", "kv", "k"],
                ["status"], ["rm-coordinator", "1"], ["add-space", "-e", "space x key k"]):
        p = run([cmd[0], "-p", str(port)] + cmd[1:], input="ping\n")
        assert p.returncode == 3, (cmd, p.returncode, p.stderr)
        assert "cannot connect to 127.0.0.1:%d" % port in p.stderr
        assert p.stdout == ""


def test_host_and_port_option_forms(pb):
    port = str(pb.port)
    ok(cli(pb, "put", "phonebook", "k1", "first", "A"))
    for args in (["--host", HOST, "--port", port], ["--host=" + HOST, "--port=" + port],
                 ["-p", port, "-h", "localhost"], ["-p", port, "--"]):
        assert ok(run(["get"] + args + ["phonebook", "k1"])) == 'first: A\nlast: ""\nphone: 0\n'
    # Options come before the positional arguments: after them "-p" is data.
    p = run(["get", "phonebook", "k1", "-p", port])
    assert p.returncode == 2


# -- spaces ------------------------------------------------------------------------

def test_add_space_from_file_stdin_and_text(server, tmp_path):
    f = tmp_path / "pb.space"
    f.write_text(PHONEBOOK)
    assert ok(cli(server, "add-space", str(f))) == ""
    ok(cli(server, "add-space", input="space kv\nkey k\nattributes v\n"))
    ok(cli(server, "add-space", "-", input="space kv2 key k attributes int n"))
    ok(cli(server, "add-space", "--expr", "space kv3\nkey k\nattributes float x\n"))
    assert ok(cli(server, "list-spaces")) == "phonebook\nkv\nkv2\nkv3\n"

    desc = ok(cli(server, "describe-space", "phonebook"))
    assert desc.splitlines() == [
        "space phonebook", "key username",
        "attributes string first, string last, int phone",
        "subspace first, last, phone", "create 8 partitions", "tolerate 2 failures"]

    # The server's refusal is printed and exits 1.
    p = cli(server, "add-space", "-e", "space bad\nkey k\nattributes integer phone\n")
    assert p.returncode == 1
    assert p.stderr.startswith("keel: ERR line 3")
    assert "integer" in p.stderr
    p = cli(server, "add-space", "-e", PHONEBOOK)
    assert p.returncode == 1 and p.stderr.startswith("keel: ")

    p = cli(server, "add-space", str(tmp_path / "missing"))
    assert p.returncode == 1
    assert "cannot open" in p.stderr and "missing" in p.stderr

    p = cli(server, "describe-space", "nope")
    assert p.returncode == 1
    assert p.stderr == "keel: NOSPACE no such space 'nope'\n"


def test_rm_space(pb):
    put_people(pb)
    ok(cli(pb, "add-space", "-e", "space kv key k attributes v"))
    assert ok(cli(pb, "rm-space", "phonebook")) == ""
    assert ok(cli(pb, "list-spaces")) == "kv\n"
    p = cli(pb, "rm-space", "phonebook")
    assert p.returncode == 1
    assert p.stderr == "keel: NOSPACE no such space 'phonebook'\n"
    p = cli(pb, "get", "phonebook", "jsmith1")
    assert p.returncode == 1 and "NOSPACE" in p.stderr
    assert ok(cli(pb, "rm-space", "kv")) == ""
    assert ok(cli(pb, "list-spaces")) == ""


# -- data ----------------------------------------------------------------------------

def test_put_get(pb):
    assert ok(cli(pb, "put", "phonebook", "jsmith1", "first", "John", "last", "Smith",
                  "phone", "6075551024")) == ""
    assert ok(cli(pb, "get", "phonebook", "jsmith1")) == (
        "first: John\nlast: Smith\nphone: 6075551024\n")
    # Partial update; a value with a space is quoted, an empty one shown as "".
    ok(cli(pb, "put", "phonebook", "jsmith1", "last", "van Smith", "first", ""))
    assert ok(cli(pb, "get", "phonebook", "jsmith1")) == (
        'first: ""\nlast: "van Smith"\nphone: 6075551024\n')
    # No attributes: created with zero values.
    ok(cli(pb, "put", "phonebook", "empty"))
    assert ok(cli(pb, "get", "phonebook", "empty")) == 'first: ""\nlast: ""\nphone: 0\n'
    # Negative numbers after the positionals are values, not options.
    ok(cli(pb, "put", "phonebook", "neg", "phone", "-5"))
    assert "phone: -5\n" in ok(cli(pb, "get", "phonebook", "neg"))


def test_get_not_found_exits_1(pb):
    p = cli(pb, "get", "phonebook", "nobody")
    assert p.returncode == 1
    assert p.stdout == "(not found)\n"


def test_values_needing_quotes(server):
    ok(cli(server, "add-space", "-e", "space kv key k attributes v, float f"))
    cases = {
        "tab\there": '"tab\\there"',
        "line\nbreak": '"line\\nbreak"',
        'say "hi"': '"say \\"hi\\""',
        "back\\slash": '"back\\\\slash"',
        "caf\u00e9": '"caf\\xc3\\xa9"',
        "plain": "plain",
    }
    for i, (value, shown) in enumerate(cases.items()):
        key = "k%d" % i
        ok(cli(server, "put", "kv", key, "v", value, "f", "2.5"))
        assert ok(cli(server, "get", "kv", key)) == "v: %s\nf: 2.5\n" % shown
    # Keys may hold spaces.
    ok(cli(server, "put", "kv", "a key", "v", "x"))
    assert ok(cli(server, "get", "kv", "a key")) == "v: x\nf: 0\n"


def test_put_errors(pb):
    p = cli(pb, "put", "phonebook", "k", "phone", "abc")
    assert p.returncode == 1
    assert p.stderr.startswith("keel: WRONGTYPE ")
    assert "phone" in p.stderr
    p = cli(pb, "put", "phonebook", "k", "age", "3")
    assert p.returncode == 1 and p.stderr.startswith("keel: NOATTR ")
    p = cli(pb, "put", "nospace", "k", "a", "b")
    assert p.returncode == 1
    assert p.stderr == "keel: NOSPACE no such space 'nospace'\n"
    # A refused request changes nothing.
    assert cli(pb, "get", "phonebook", "k").returncode == 1


def test_del(pb):
    put_people(pb)
    assert ok(cli(pb, "del", "phonebook", "jd")) == "deleted\n"
    assert ok(cli(pb, "del", "phonebook", "jd")) == "(not found)\n"
    assert cli(pb, "get", "phonebook", "jd").returncode == 1
    assert ok(cli(pb, "count", "phonebook")) == "2\n"
    p = cli(pb, "del", "nospace", "k")
    assert p.returncode == 1 and "NOSPACE" in p.stderr


def test_search(pb):
    put_people(pb)
    objs = parse_blocks(ok(cli(pb, "search", "phonebook")))
    assert sorted(o["username"] for o in objs) == ["bob", "jd", "jsmith1"]
    bob = [o for o in objs if o["username"] == "bob"][0]
    assert bob == {"username": "bob", "first": "Bob", "last": '"van Dyke"', "phone": "7"}
    # Each object is a block: key first, then the attributes in schema order.
    for o in objs:
        assert list(o) == ["username", "first", "last", "phone"]

    objs = parse_blocks(ok(cli(pb, "search", "phonebook", "phone", "<", "100")))
    assert sorted(o["username"] for o in objs) == ["bob", "jd"]
    objs = parse_blocks(ok(cli(pb, "search", "phonebook", "phone", ">=", "7",
                               "first", "=", "Jane")))
    assert [o["username"] for o in objs] == ["jd"]
    objs = parse_blocks(ok(cli(pb, "search", "phonebook", "username", "=", "bob")))
    assert [o["username"] for o in objs] == ["bob"]

    # --limit, after the predicates or among the options.
    assert len(parse_blocks(ok(cli(pb, "search", "phonebook", "--limit", "2")))) == 2
    assert len(parse_blocks(ok(run(["search", "-p", str(pb.port), "--limit", "1",
                                    "phonebook"])))) == 1
    assert len(parse_blocks(ok(cli(pb, "search", "phonebook", "phone", ">", "0",
                                   "--limit", "1")))) == 1

    assert ok(cli(pb, "search", "phonebook", "phone", ">", "99999999999")) == ""

    p = cli(pb, "search", "phonebook", "age", "=", "3")
    assert p.returncode == 1 and p.stderr.startswith("keel: NOATTR ")
    p = cli(pb, "search", "phonebook", "phone", "<", "x")
    assert p.returncode == 1 and p.stderr.startswith("keel: WRONGTYPE ")


def test_count(pb):
    assert ok(cli(pb, "count", "phonebook")) == "0\n"
    put_people(pb)
    assert ok(cli(pb, "count", "phonebook")) == "3\n"
    assert ok(cli(pb, "count", "phonebook", "phone", "<=", "42")) == "2\n"
    assert ok(cli(pb, "count", "phonebook", "phone", "<=", "42", "last", ">", "E")) == "1\n"
    p = cli(pb, "count", "nope")
    assert p.returncode == 1 and "NOSPACE" in p.stderr


# -- shell ---------------------------------------------------------------------------

def test_shell_pipe(pb):
    script = "\n".join([
        "ping",
        'PUT phonebook jsmith1 first John last "van Smith" phone 6075551024',
        "get phonebook jsmith1",
        "GET phonebook nobody",
        "put phonebook jd first 'Jane' phone 42",
        "SEARCH phonebook phone < 100",
        "search phonebook phone > 99999999999",
        "COUNT phonebook",
        "SPACE.LIST",
        "SPACE.DESCRIBE phonebook",
        "",
        "   ",
        "ECHO \"a\\tb\"",
        "ADD phonebook jd phone 8",
        "quit",
        "PUT phonebook after first quit",
    ]) + "\n"
    p = cli(pb, "shell", input=script)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stderr == ""
    assert p.stdout == (
        "PONG\n"
        "OK\n"
        'first: John\nlast: "van Smith"\nphone: 6075551024\n'
        "(nil)\n"
        "OK\n"
        'username: jd\nfirst: Jane\nlast: ""\nphone: 42\n'
        "(no objects)\n"
        "(integer) 2\n"
        '1) "phonebook"\n'
        "space phonebook\nkey username\n"
        "attributes string first, string last, int phone\n"
        "subspace first, last, phone\ncreate 8 partitions\ntolerate 2 failures\n"
        '"a\\tb"\n'
        "(integer) 50\n")
    # Nothing after quit ran.
    assert cli(pb, "get", "phonebook", "after").returncode == 1


def test_shell_errors_and_exit_status(pb):
    p = cli(pb, "shell", input='bogus\nGET nospace k\nput phonebook "open\nping\n')
    assert p.returncode == 1  # batch mode: some command failed
    assert p.stdout == ("(error) ERR unknown command 'bogus'\n"
                        "(error) NOSPACE no such space 'nospace'\n"
                        "(error) unbalanced quotes\n"
                        "PONG\n")
    # End of input leaves the shell; all good -> 0.
    p = cli(pb, "shell", input="ping")
    assert (p.returncode, p.stdout) == (0, "PONG\n")
    p = cli(pb, "shell", input="help\n")
    assert p.returncode == 0
    assert "SEARCH space" in p.stdout and "quit" in p.stdout


def test_shell_generic_replies(pb):
    put_people(pb)
    p = cli(pb, "shell", input="INFO\nSPACE.LIST\nsearch phonebook username = bob\n"
                               "DEL phonebook bob\nSPACE.DROP phonebook\nSPACE.LIST\n")
    assert p.returncode == 0, p.stdout
    out = p.stdout
    assert out.startswith("# ")          # INFO printed as text, not quoted
    assert '1) "phonebook"\n' in out
    assert 'username: bob\nfirst: Bob\nlast: "van Dyke"\nphone: 7\n' in out
    assert "(integer) 1\nOK\n(empty array)\n" in out


def test_shell_reconnects_after_server_restart(pb):
    proc = subprocess.Popen([KEEL_BIN, "shell", "-p", str(pb.port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    try:
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "PONG\n"
        pb.stop()
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.startswith("(error) "), line
        pb.start()
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "PONG\n"
        proc.stdin.close()
        assert proc.wait(timeout=RUN_TIMEOUT) == 1  # one command failed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _read_pty(fd, until, timeout=10.0):
    """Reads from fd until `until` (bytes) was seen; returns all read."""
    out = b""
    deadline = time.monotonic() + timeout
    while until not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_shell_interactive_prompt_and_history(pb, tmp_path):
    ok(cli(pb, "put", "phonebook", "jd", "first", "Jane"))
    env = dict(os.environ, HOME=str(tmp_path), TERM="dumb")
    prompt = ("keel %s:%d> " % (pb.host, pb.port)).encode()
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execve(KEEL_BIN, [KEEL_BIN, "shell", "-p", str(pb.port)], env)
        finally:
            os._exit(127)
    try:
        assert prompt in _read_pty(fd, prompt)
        os.write(fd, b"get phonebook jd\r")
        out = _read_pty(fd, prompt)
        assert b"first: Jane" in out
        os.write(fd, b"quit\r")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    hist = (tmp_path / ".keel_history").read_text()
    assert "get" in hist and "jd" in hist


# -- coordinator commands --------------------------------------------------------

def test_status_and_rm_coordinator_against_standalone(server):
    # The standalone server is no coordinator: its refusal is printed, exit 1.
    for args in (["status"], ["status", "--json"], ["status", "--stale"],
                 ["rm-coordinator", "2"]):
        p = cli(server, *args)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert p.stdout == ""
        assert re.fullmatch(r"keel: ERR unknown command '(CLUSTER\.STATUS|COORD\.REMOVE)'\n",
                            p.stderr), p.stderr


def read_command(rfile):
    """Reads one RESP multibulk request; returns its arguments as str, or
    None at end of input."""
    line = rfile.readline()
    if not line:
        return None
    assert line.startswith(b"*"), line
    argv = []
    for _ in range(int(line[1:])):
        hdr = rfile.readline()
        assert hdr.startswith(b"$"), hdr
        n = int(hdr[1:])
        argv.append(rfile.read(n + 2)[:n].decode())
    return argv


def bulk(text):
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class _FakeHandler(socketserver.StreamRequestHandler):
    def handle(self):
        fake = self.server.fake
        while True:
            try:
                argv = read_command(self.rfile)
            except (OSError, ValueError):
                return
            if argv is None:
                return
            with fake.lock:
                # libkeel asks every server it connects to `INFO server`
                # (standalone, coordinator or daemon?); the scripts are about
                # what the CLI sends, so that probe is answered but not recorded
                if not (argv[0].upper() == "INFO" and "INFO" not in fake.script):
                    fake.requests.append(argv)
                replies = fake.script.get(argv[0].upper(), [b"-ERR unknown command\r\n"])
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
            self.wfile.write(reply)
            self.wfile.flush()


class FakeCoordinator:
    """A RESP server on a free port answering from a script: for each
    command name, a list of replies (bytes) given in order, the last one
    repeated. Records every request (lists of str) in `requests`, except an
    unscripted INFO (libkeel's connect-time probe, answered with an error)."""

    def __init__(self, script):
        self.script = {k: list(v) for k, v in script.items()}
        self.requests = []
        self.lock = threading.Lock()
        self.server = socketserver.ThreadingTCPServer((HOST, 0), _FakeHandler)
        self.server.daemon_threads = True
        self.server.fake = self
        self.host = HOST
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def fake_coord():
    """Factory: fake_coord(script) starts a FakeCoordinator; all are closed
    at teardown."""
    made = []

    def make(script):
        f = FakeCoordinator(script)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


def status_doc(since_ms):
    return {
        "cluster_id": "9f2c0a1b", "map_version": 12, "leader": 2, "term": 3,
        "commit_index": 40,
        "coordinators": [
            {"id": 1, "address": "127.0.0.1:1982", "peer_address": "127.0.0.1:11982",
             "voter": True, "role": "follower", "match_index": 39, "reachable": True},
            {"id": 2, "address": "127.0.0.1:1983", "peer_address": "127.0.0.1:11983",
             "voter": True, "role": "leader", "match_index": 40, "reachable": True},
            {"id": 13, "address": "127.0.0.1:1984", "peer_address": "127.0.0.1:11984",
             "voter": False, "role": "learner", "match_index": 7, "reachable": False},
        ],
        "daemons": [
            {"id": 1, "address": "127.0.0.1:2012", "peer_address": "127.0.0.1:12012",
             "state": "ONLINE", "since_ms": since_ms},
            {"id": 2, "address": "127.0.0.1:2013", "peer_address": "127.0.0.1:12013",
             "state": "SHUTDOWN", "since_ms": since_ms - 3723000},
        ],
        "spaces": [
            {"name": "phonebook", "id": 1, "partitions": 8, "tolerate": 2,
             "health": {"PROTECTED": 0, "DEGRADED": 8, "UNAVAILABLE": 0}},
            {"name": "kv", "id": 2, "partitions": 16, "tolerate": 1,
             "health": {"PROTECTED": 10, "DEGRADED": 4, "UNAVAILABLE": 2}},
        ],
        "settings": {"heartbeat_ms": 250, "ping_timeout_ms": 3000, "reprotect_delay_s": 60,
                     "log_retention": 1000000, "note": "two words"},
    }


def utc(ms):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000))


def test_status_human_output(fake_coord):
    since = int(time.time() * 1000) - 42000
    doc = json.dumps(status_doc(since))
    # The first attempt meets an election: the CLI waits and asks again.
    fake = fake_coord({"CLUSTER.STATUS": [
        b"-TRYAGAIN no leader yet (election in progress)\r\n", bulk(doc)]})
    p = run(["status", "-p", str(fake.port)], env=dict(os.environ, TZ="UTC"))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert fake.requests == [["CLUSTER.STATUS"], ["CLUSTER.STATUS"]]
    lines = p.stdout.split("\n")
    # The daemons' SINCE column depends on the clock: check it apart.
    m = re.fullmatch(r"  1   127\.0\.0\.1:2012  ONLINE    (.*) \((\d+)s ago\)", lines[14])
    assert m, lines[14]
    assert m.group(1) == utc(since)
    assert 42 <= int(m.group(2)) <= 42 + RUN_TIMEOUT
    m = re.fullmatch(r"  2   127\.0\.0\.1:2013  SHUTDOWN  (.*) \(1h0(\d)m ago\)", lines[15])
    assert m, lines[15]
    assert m.group(1) == utc(since - 3723000)
    lines[14] = lines[15] = "(since)"
    assert "\n".join(lines) == """\
cluster       9f2c0a1b
map version   12
term          3
leader        2 (127.0.0.1:1983)
commit index  40

coordinators (3)
  ID  ADDRESS         ROLE      VOTER  MATCH  REACHABLE
  1   127.0.0.1:1982  follower  yes    39     yes
  2   127.0.0.1:1983  leader    yes    40     yes
  13  127.0.0.1:1984  learner   no     7      no

daemons (2)
  ID  ADDRESS         STATE     SINCE
(since)
(since)

spaces (2)
  NAME       PARTITIONS  TOLERATE  PROTECTED  DEGRADED  UNAVAILABLE
  phonebook  8           2         0          8         0
  kv         16          1         10         4         2

settings
  heartbeat_ms       250
  ping_timeout_ms    3000
  reprotect_delay_s  60
  log_retention      1000000
  note               "two words"
"""


def test_status_empty_cluster_and_missing_fields(fake_coord):
    # A cluster without daemons or spaces, and fields this version does not
    # know or that are missing: shown as "-", never a failure.
    doc = {"cluster_id": "ab", "map_version": 1, "leader": 0, "term": 1, "future": [1],
           "coordinators": [{"id": 1, "address": "127.0.0.1:1982", "extra": {}}],
           "daemons": [], "spaces": []}
    fake = fake_coord({"CLUSTER.STATUS": [bulk(json.dumps(doc))]})
    p = run(["status", "-p", str(fake.port)])
    assert p.returncode == 0, p.stderr
    assert p.stdout == """\
cluster       ab
map version   1
term          1
leader        none (no leader known)
commit index  -

coordinators (1)
  ID  ADDRESS         ROLE  VOTER  MATCH  REACHABLE
  1   127.0.0.1:1982  -     -      -      -

daemons (0)
  (none)

spaces (0)
  (none)

settings
  (none)
"""


def test_status_json_and_stale(fake_coord):
    doc = json.dumps(status_doc(1795412345678), indent=1)
    fake = fake_coord({"CLUSTER.STATUS": [bulk(doc)]})
    # --json: the document exactly as received, plus a final newline.
    p = run(["status", "--json", "-p", str(fake.port)])
    assert p.returncode == 0, p.stderr
    assert p.stdout == doc + "\n"
    assert json.loads(p.stdout) == status_doc(1795412345678)
    # --stale sends STALE as the last argument; options in any order.
    p = run(["status", "--stale", "--port", str(fake.port), "--json"])
    assert p.returncode == 0 and p.stdout == doc + "\n"
    p = run(["status", "-p", str(fake.port), "--stale"])
    assert p.returncode == 0 and "coordinators (3)" in p.stdout
    assert fake.requests == [["CLUSTER.STATUS"], ["CLUSTER.STATUS", "STALE"],
                             ["CLUSTER.STATUS", "STALE"]]


def test_status_bad_documents(fake_coord):
    for body, why in [("{\"a\": 1,}", "not valid JSON: byte 8: expected a member name"),
                      ("", "not valid JSON: byte 0"),
                      ("[1, 2]", "is a JSON array, not an object"),
                      ("{\"a\": \"\\ud800\"}", "not valid JSON")]:
        fake = fake_coord({"CLUSTER.STATUS": [bulk(body)]})
        p = run(["status", "-p", str(fake.port)])
        assert p.returncode == 1, (body, p.stdout)
        assert p.stdout == ""
        assert p.stderr.startswith("keel: the CLUSTER.STATUS reply ")
        assert why in p.stderr, (body, p.stderr)
        # --json does not judge the document.
        p = run(["status", "--json", "-p", str(fake.port)])
        assert p.returncode == 0 and p.stdout == body + "\n"
    # A reply of the wrong type is a protocol error, reported as such.
    fake = fake_coord({"CLUSTER.STATUS": [b":1\r\n"]})
    p = run(["status", "-p", str(fake.port)])
    assert p.returncode == 1
    assert p.stderr.startswith("keel: protocol error: unexpected integer reply to "
                               "CLUSTER.STATUS")


def test_status_follows_the_leader(fake_coord):
    doc = json.dumps(status_doc(1795412345678))
    leader = fake_coord({"CLUSTER.STATUS": [bulk(doc)]})
    follower = fake_coord({"CLUSTER.STATUS": [
        b"-TRYAGAIN leader is 127.0.0.1:%d (unreachable from here)\r\n" % leader.port]})
    p = run(["status", "--json", "-p", str(follower.port)])
    assert p.returncode == 0, p.stderr
    assert p.stdout == doc + "\n"
    assert follower.requests == [["CLUSTER.STATUS"]]
    assert leader.requests == [["CLUSTER.STATUS"]]

    # A leader the CLI cannot reach either: it stays with the coordinator it
    # has and asks again.
    dead = free_port()
    fake = fake_coord({"CLUSTER.STATUS": [
        b"-TRYAGAIN leader is [127.0.0.1]:%d\r\n" % dead,
        b"-TRYAGAIN leader is 127.0.0.1:%d\r\n" % dead, bulk(doc)]})
    p = run(["status", "--json", "-p", str(fake.port)])
    assert p.returncode == 0, p.stderr
    assert p.stdout == doc + "\n"
    assert len(fake.requests) == 3


def test_tryagain_gives_up_after_about_5s(fake_coord):
    fake = fake_coord({"CLUSTER.STATUS": [
        b"-TRYAGAIN no leader yet (election in progress)\r\n"]})
    t0 = time.monotonic()
    p = run(["status", "-p", str(fake.port)])
    took = time.monotonic() - t0
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == "keel: TRYAGAIN no leader yet (election in progress)\n"
    assert 4.5 <= took <= 10, took
    # A growing pause: several attempts, but not a busy loop.
    assert 4 <= len(fake.requests) <= 20, len(fake.requests)


def test_rm_coordinator(fake_coord):
    fake = fake_coord({"COORD.REMOVE": [
        b"+OK\r\n",
        b"-ERR removing coordinator 2 would leave 1 reachable voter of 3\r\n",
        b"-TRYAGAIN no leader yet (election in progress)\r\n",
        b"+OK\r\n"]})
    port = str(fake.port)
    assert ok(run(["rm-coordinator", "-p", port, "3"])) == ""
    p = run(["rm-coordinator", "-p", port, "2"])
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == "keel: ERR removing coordinator 2 would leave 1 reachable voter of 3\n"
    # -TRYAGAIN is retried.
    assert ok(run(["rm-coordinator", "-p", port, "18446744073709551615"])) == ""
    assert fake.requests == [["COORD.REMOVE", "3"], ["COORD.REMOVE", "2"],
                             ["COORD.REMOVE", "18446744073709551615"],
                             ["COORD.REMOVE", "18446744073709551615"]]


def test_admin_commands_retry_data_commands_do_not(fake_coord):
    again = b"-TRYAGAIN no leader yet (election in progress)\r\n"
    fake = fake_coord({"SPACE.ADD": [again, b"+OK\r\n"], "SPACE.DROP": [again, b"+OK\r\n"],
                       "GET": [again, b"*0\r\n"], "PUT": [again, b"+OK\r\n"]})
    port = str(fake.port)
    ok(run(["add-space", "-p", port, "-e", "space kv key k attributes v"]))
    ok(run(["rm-space", "-p", port, "kv"]))
    # Data commands report -TRYAGAIN at once.
    for args in (["get", "-p", port, "kv", "k"], ["put", "-p", port, "kv", "k", "v", "1"]):
        p = run(args)
        assert p.returncode == 1
        assert p.stderr == "keel: TRYAGAIN no leader yet (election in progress)\n"
    assert [r[0] for r in fake.requests] == ["SPACE.ADD", "SPACE.ADD", "SPACE.DROP",
                                             "SPACE.DROP", "GET", "PUT"]
    assert fake.requests[0] == ["SPACE.ADD", "space kv key k attributes v"]
