#!/usr/bin/python3
"""failover_times: how long a replicated partition is unwritable when its
primary dies or hangs, and how fast a returning daemon replays the log tail.

    /usr/bin/python3 bench/failover_times.py --client PATH [--trials 5]
        [--tail-trials 3] [--tail-n 200000] [--coordinators 3] [--dir DIR] [--keep]

Starts real processes through tests/cluster/harness.py ($KEEL_BIN, else
build/keel): `--coordinators` coordinators with default timings (no
--tick-ms) and 2 daemons, each on its own loopback address, and a space
`kv` with 8 partitions and `tolerate 1 failures`, so every partition has a
primary on one daemon and a backup on the other. reprotect_delay_s is set to
600 so that every daemon that returns does so within the delay (tail replay,
not re-protection elsewhere; with 2 daemons there is nowhere else anyway).

1. Failover, for each scenario (kill -9 or SIGSTOP of the primary, with
   ping_timeout_ms 3000 (the default) and 1000; heartbeat_ms stays 250):
   `--trials` times, with every partition PROTECTED, a fresh key is written,
   its primary found (`FWD GET` is answered with the object only by the
   primary), and that daemon is killed (SIGKILL) or stopped (SIGSTOP). From
   just after the signal, `PUT kv KEY v after` is sent to the other daemon
   on a fresh connection every 10 ms, without waiting for earlier attempts
   (an attempt is abandoned after 10 s; at most 1500 open), until one answers
   +OK: a request stuck behind the stopped primary does not hide a later one
   that succeeds, so the resolution is 10 ms. The failover time is from the
   signal to that +OK. The victim is then restarted
   (SIGCONT after SIGSTOP) and the next trial waits until every partition is
   PROTECTED again. Reports median, p90 (nearest rank), min and max.
2. Tail replay (ping_timeout_ms 1000): a daemon that leads no partition
   (after the failover trials the survivor leads all 8) is killed with SIGKILL; once
   the coordinator has declared it failed (every partition DEGRADED), the
   client binary (bench/redis_wait.c, --client) writes `--tail-n` PUTs with
   distinct keys through the surviving daemon (50 connections), each one a
   log entry the returning daemon has missed; then the daemon is restarted
   and the time from its start to every partition PROTECTED again (from
   CLUSTER.STATUS on the coordinator leader, polled every 20 ms) is measured.
   Baseline trials with no writes meanwhile measure what a restart costs
   without a tail (process start, registration, map, the coordinator's flip
   to IN_SYNC). Reports entries/s both including and net of that baseline.

   A tail trial whose daemon is not PROTECTED within 120 s is reported (with
   any `full_copy_needed` events from the logs) and ends the tail trials; it
   is a measured outcome, not a failure to run.
3. Full copy (--copy-mb, default 200; 0 skips it): log_retention is set to
   1000 entries, the same backup-only daemon is killed, `--copy-mb` MB of
   1000-byte values (distinct keys) are written through the survivor, far
   beyond the retained log, and the daemon is restarted: every partition it
   held comes back by a full copy (snapshot + tail). The transfer rate is the
   bytes of the copies (`event=full_copy_started ... bytes=N` on the
   survivor) over the time from the first copy's start to the last
   `event=full_copy_installed` on the returning daemon (the log timestamps of
   the two processes share one clock); also reported: restart to PROTECTED.

Every wait is bounded (60 s per failover, 120 s per restart, the client run
300 s). Exit status 0 when every failover trial completed, whatever the
numbers; 1 otherwise. Every process is killed by pid at the end.
"""

import argparse
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "cluster"))

import harness  # noqa: E402
from harness import ProtocolError, RespError  # noqa: E402

RETRY_S = 0.01
ATTEMPT_TIMEOUT_S = 10.0
MAX_INFLIGHT = 1500
FAILOVER_LIMIT_S = 60.0
RESTART_LIMIT_S = 120.0
PARTITIONS = 8


def leader_status(cl):
    return cl.wait_leader(timeout=10).status()


def protected(st):
    return (st["protection"]["fully_protected"]
            and all(s["health"]["DEGRADED"] == 0 and s["health"]["UNAVAILABLE"] == 0
                    for s in st["spaces"]))


def wait_protected(cl, timeout=RESTART_LIMIT_S):
    harness.wait_for(lambda: protected(leader_status(cl)), timeout,
                     "every partition PROTECTED", interval=0.02)


def wait_leases(ds, timeout=30):
    harness.wait_for(lambda: all(d.lease(timeout=1.0)[0] for d in ds), timeout,
                     "every daemon to hold a lease")


def put_retry(ds, key, value, timeout=30):
    """PUT through the live daemons in turn until one answers +OK."""
    deadline = time.monotonic() + timeout
    i, last = 0, None
    while time.monotonic() < deadline:
        live = [d for d in ds if d.live()]
        d = live[i % len(live)]
        i += 1
        try:
            if d.call("PUT", "kv", key, "v", value, timeout=2.0) == "OK":
                return
        except (RespError, OSError, ProtocolError) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError("PUT %s not acknowledged within %.0f s: %r" % (key, timeout, last))


def primary_of(ds, key):
    def find():
        for d in ds:
            if d.live() and isinstance(d.try_call("FWD", "GET", "kv", key, timeout=1.0), list):
                return d
        return None
    return harness.wait_for(find, 15, "the primary of %r" % key)


def set_config(cl, name, value):
    assert cl.write(["CLUSTER.CONFIG", "SET", name, str(value)]) == "OK"


def first_ok(node, key, t0):
    """Sends `PUT kv KEY v after` to node on a fresh connection every RETRY_S
    seconds, without waiting for earlier attempts (at most MAX_INFLIGHT open,
    each abandoned after ATTEMPT_TIMEOUT_S), until one answers +OK; returns
    (seconds since t0 to that +OK, attempts, {error kind: count}). So a
    request that hangs on a stopped primary does not hide a later one that
    would succeed: the resolution is RETRY_S, not the attempt timeout."""
    req = harness.encode("PUT", "kv", key, "v", "after")
    inflight = {}   # socket -> [start time, received bytes]
    attempts, seen = 0, {}
    next_at = time.monotonic()

    def note(kind):
        seen[kind] = seen.get(kind, 0) + 1

    def drop(s):
        inflight.pop(s, None)
        s.close()
    try:
        while True:
            now = time.monotonic()
            if now - t0 > FAILOVER_LIMIT_S:
                raise AssertionError("no write on the partition acknowledged within %.0f s; "
                                     "errors %r" % (FAILOVER_LIMIT_S, seen))
            if now >= next_at and len(inflight) < MAX_INFLIGHT:
                next_at = now + RETRY_S
                attempts += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    s.connect((node.host, node.port))
                except BlockingIOError:
                    pass
                except OSError as e:
                    note(type(e).__name__)
                    s.close()
                    s = None
                if s is not None:
                    inflight[s] = [now, b"", False]
            for s, st in list(inflight.items()):
                if now - st[0] > ATTEMPT_TIMEOUT_S:
                    note("timeout")
                    drop(s)
            poller = select.poll()
            byfd = {}
            for s, st in inflight.items():
                byfd[s.fileno()] = s
                poller.register(s, select.POLLIN | (0 if st[2] else select.POLLOUT))
            ready = poller.poll(max(0.0, next_at - time.monotonic()) * 1000)
            r = [byfd[fd] for fd, ev in ready if ev & (select.POLLIN | select.POLLERR | select.POLLHUP)]
            wr = [byfd[fd] for fd, ev in ready if ev & select.POLLOUT]
            for s in wr:
                st = inflight.get(s)
                if st is None:
                    continue
                try:
                    s.send(req)
                    st[2] = True
                except BlockingIOError:
                    pass
                except OSError as e:
                    note(type(e).__name__)
                    drop(s)
            for s in r:
                st = inflight.get(s)
                if st is None:
                    continue
                try:
                    chunk = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    note(type(e).__name__)
                    drop(s)
                    continue
                if not chunk:
                    note("closed")
                    drop(s)
                    continue
                st[1] += chunk
                if not st[1].endswith(b"\r\n"):
                    continue
                line = st[1].split(b"\r\n", 1)[0].decode("utf-8", "replace")
                if line == "+OK":
                    took = time.monotonic() - t0
                    if len(inflight) > 1:
                        seen["still unanswered"] = len(inflight) - 1
                    return took, attempts, seen
                if line.startswith("-"):
                    note(line[1:].split(" ", 1)[0])
                    drop(s)
                else:
                    raise AssertionError("unexpected reply to PUT: %r" % line)
    finally:
        for s in list(inflight):
            s.close()


def failover_trial(cl, ds, how, n):
    """One kill -9 / SIGSTOP of a primary; returns (seconds, attempts, errors seen)."""
    wait_protected(cl)
    wait_leases(ds)
    key = "fo-%s-%d" % (how, n)
    put_retry(ds, key, "before")
    victim = primary_of(ds, key)
    other = [d for d in ds if d is not victim][0]
    time.sleep(0.5)
    t0 = time.monotonic()
    if how == "kill9":
        victim.kill9()
    else:
        victim.pause()
    try:
        took, attempts, seen = first_ok(other, key, t0)
    finally:
        if how == "kill9":
            victim.restart(wait=False)
        else:
            victim.resume()
    victim.wait_ready(timeout=RESTART_LIMIT_S)
    r = other.call("GET", "kv", key, timeout=2.0)
    assert isinstance(r, list) and r[1] == b"after", r
    return took, attempts, seen


def backup_only(cl, ds):
    """The daemon that is primary of no partition (64 probe keys reach all 8
    partitions, odds of a miss ~1e-3); after a failover trial every partition
    is led by the survivor."""
    wait_protected(cl)
    lead = {d.name: 0 for d in ds}
    for i in range(64):
        key = "lead-probe-%d" % i
        put_retry(ds, key, "x")
        lead[primary_of(ds, key).name] += 1
    free = [d for d in ds if lead[d.name] == 0]
    if not free:
        raise AssertionError("every daemon leads some partition: %r" % lead)
    return free[0]


def run_client(client, node, n):
    """Writes n PUTs with distinct keys through node; returns the client's line."""
    argv = [client, "-m", "put", "-s", "kv", "-h", node.host, "-p", str(node.port),
            "-c", "50", "-n", str(n), "-S", "-T", "300"]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=330)
    out = p.stdout.decode().strip()
    if p.returncode != 0 or not re.search(r"errors=0 ", out):
        raise AssertionError("client failed (%d): %s %s" % (p.returncode, out,
                                                            p.stderr.decode()[-2000:]))
    return out


def wait_serves(node):
    """Until node answers a PUT on every partition (200 keys reach all 8; a
    miss has odds ~1e-11): the partitions have settled after a kill."""
    def serves():
        with node.conn(timeout=5.0) as c:
            c.send_many([("PUT", "kv", "probe-%d" % i, "v", "p") for i in range(200)])
            return all(c.read() == "OK" for _ in range(200))
    harness.wait_for(serves, 30, "the survivor to serve every partition", interval=0.05)


def tail_trial(cl, ds, client, victim, n):
    """Kill victim, write n entries meanwhile, restart it; returns
    (seconds from start to PROTECTED, seconds to PONG, client line)."""
    wait_protected(cl)
    wait_leases(ds)
    other = [d for d in ds if d is not victim][0]
    victim.kill9()

    def degraded():
        st = leader_status(cl)
        return st["protection"]["degraded"] == PARTITIONS
    harness.wait_for(degraded, 30, "every partition DEGRADED after the kill", interval=0.02)
    wait_serves(other)
    line = run_client(client, other, n) if n else "no writes"
    t0 = time.monotonic()
    victim.start(wait=False)
    t_pong = None
    deadline = t0 + RESTART_LIMIT_S
    while True:
        now = time.monotonic()
        if t_pong is None and harness.ping(victim.host, victim.port, timeout=0.2):
            t_pong = time.monotonic() - t0
        try:
            if protected(leader_status(cl)):
                took = time.monotonic() - t0
                break
        except (RespError, OSError, ProtocolError, harness.WaitTimeout):
            pass
        if now > deadline:
            raise AssertionError("not PROTECTED within %.0f s of the restart:\n%s"
                                 % (RESTART_LIMIT_S, victim.log_tail(20)))
        victim.check_running()
        time.sleep(0.02)
    if t_pong is None:
        t_pong = took
    return took, t_pong, line


def _log_ts(line):
    """Seconds since the epoch of a log line's leading ISO timestamp."""
    import datetime
    stamp = line.split(" ", 1)[0].rstrip("Z")
    return datetime.datetime.fromisoformat(stamp).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def copy_trial(cl, ds, client, victim, mb):
    """Kill victim, write mb MB of 1000-byte values meanwhile (beyond the
    retained log), restart it; returns (bytes copied, seconds of the copies,
    seconds from restart to PROTECTED, number of copies)."""
    set_config(cl, "log_retention", 1000)
    wait_protected(cl)
    wait_leases(ds)
    other = [d for d in ds if d is not victim][0]
    victim.kill9()
    harness.wait_for(lambda: leader_status(cl)["protection"]["degraded"] == PARTITIONS, 30,
                     "every partition DEGRADED after the kill", interval=0.02)
    wait_serves(other)
    n = mb * 1000
    argv = [client, "-m", "put", "-s", "kv", "-h", other.host, "-p", str(other.port),
            "-c", "50", "-n", str(n), "-d", "1000", "-S", "-T", "600"]
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=630)
    line = p.stdout.decode().strip()
    if p.returncode != 0 or not re.search(r"errors=0 ", line):
        raise AssertionError("client failed (%d): %s" % (p.returncode, line))
    print("  full-copy trial: wrote %d MB while %s was down: %s" % (mb, victim.name, line))
    marks = (sum(len(harness._read(q).splitlines()) for q in other.logs),
             sum(len(harness._read(q).splitlines()) for q in victim.logs))
    t0 = time.monotonic()
    victim.start(wait=False)
    wait_protected(cl, timeout=RESTART_LIMIT_S * 3)
    took = time.monotonic() - t0

    def new_lines(node, skip):
        lines = [ln for q in node.logs for ln in harness._read(q).splitlines()]
        return lines[skip:]
    started = [ln for ln in new_lines(other, marks[0]) if "event=full_copy_started" in ln]
    installed = [ln for ln in new_lines(victim, marks[1]) if "event=full_copy_installed" in ln]
    if not started or not installed:
        raise AssertionError("no full copy happened (started %d, installed %d)"
                             % (len(started), len(installed)))
    nbytes = sum(int(re.search(r" bytes=(\d+)", ln).group(1)) for ln in started)
    span = max(_log_ts(ln) for ln in installed) - min(_log_ts(ln) for ln in started)
    return nbytes, span, took, len(started)


def summary(times):
    return ("median %.0f ms, p90 %.0f ms, min %.0f ms, max %.0f ms"
            % (statistics.median(times) * 1000, harness.percentile(times, 90) * 1000,
               min(times) * 1000, max(times) * 1000))


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d cores, %s, Linux %s" % (os.cpu_count(), cpu, platform.release())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--client", required=True, help="the built bench/redis_wait.c")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--tail-trials", type=int, default=3)
    ap.add_argument("--tail-n", type=int, default=200000)
    ap.add_argument("--coordinators", type=int, default=3)
    ap.add_argument("--copy-mb", type=int, default=200,
                    help="MB written while a daemon is away, then sent to it by full copy (0: skip)")
    ap.add_argument("--dir", help="base directory for the data (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    a = ap.parse_args()
    if a.trials < 1 or a.tail_trials < 0 or a.tail_n < 1 or a.coordinators < 1:
        ap.error("need trials >= 1, tail-trials >= 0, tail-n >= 1, coordinators >= 1")
    if not os.access(a.client, os.X_OK):
        ap.error("--client %s is not an executable" % a.client)

    # a TERM (from timeout(1) or the calling script) must still run the
    # teardown below, which kills every process by pid
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < MAX_INFLIGHT + 100:
        want = MAX_INFLIGHT + 100 if hard == resource.RLIM_INFINITY else min(hard, MAX_INFLIGHT + 100)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    base = a.dir or tempfile.mkdtemp(prefix="keel-failover-bench-")
    print("failover_times: %s; %s; data in %s" % (harness.KEEL_BIN, machine(), base))
    print("%d coordinators with default timings (no --tick-ms), 2 daemons, space kv: %d "
          "partitions, tolerate 1 failures; heartbeat_ms 250, reprotect_delay_s 600"
          % (a.coordinators, PARTITIONS))
    sys.stdout.flush()
    ok = False
    cl = harness.Cluster(base, tick_ms=None)
    rows = []
    try:
        cl.start_coordinators(a.coordinators)
        set_config(cl, "reprotect_delay_s", 600)
        ds = [cl.add_daemon() for _ in range(2)]
        harness.wait_for(lambda: sum(d["state"] == "ONLINE"
                                     for d in leader_status(cl)["daemons"]) == 2,
                         20, "both daemons ONLINE")
        assert cl.write(["SPACE.ADD", "space kv key k attributes v create %d partitions "
                         "tolerate 1 failures" % PARTITIONS]) == "OK"
        for d in ds:
            harness.wait_for(lambda d=d: d.try_call("PUT", "kv", "warm", "v", "x") == "OK", 20,
                             "%s to accept writes" % d.name)

        for how, pt in (("kill9", 3000), ("kill9", 1000), ("sigstop", 3000), ("sigstop", 1000)):
            set_config(cl, "ping_timeout_ms", pt)
            times = []
            for n in range(a.trials):
                took, attempts, seen = failover_trial(cl, ds, how, n)
                times.append(took)
                print("  %s, ping_timeout %d ms, trial %d: %.0f ms (%d attempts; errors before: %s)"
                      % (how, pt, n + 1, took * 1000, attempts,
                         ", ".join("%s x%d" % kv for kv in sorted(seen.items())) or "none"))
                sys.stdout.flush()
            label = "kill -9" if how == "kill9" else "SIGSTOP"
            print("failover after %s of a primary, ping_timeout %d ms, signal -> first "
                  "acknowledged write on its partition, %d trials: %s"
                  % (label, pt, len(times), summary(times)))
            rows.append((label, pt, times))
            sys.stdout.flush()

        tails = []
        if a.tail_trials:
            set_config(cl, "ping_timeout_ms", 1000)
            base_times, tail_times = [], []
            tail_failure = None
            # the returning daemon is one that leads no partition: a backup
            # replays from the primary it left. (A daemon that led partitions
            # returns to a new primary whose retained log, kept while it was a
            # backup, does not reach back: that needs a full copy, not built.)
            victim = backup_only(cl, ds)
            print("  tail trials restart %s, which leads no partition" % victim.name)
            for n in range(a.tail_trials):
                for entries in (0, a.tail_n):
                    try:
                        took, pong, line = tail_trial(cl, ds, a.client, victim, entries)
                    except AssertionError as e:
                        copy = [ln for d in ds for p in d.logs for ln in harness._read(p).splitlines()
                                if "event=full_copy_needed" in ln]
                        tail_failure = ("tail trial %d (%d entries missed, victim %s) did not "
                                        "complete: %s; full_copy_needed events logged: %d%s"
                                        % (n + 1, entries, victim.name, str(e).splitlines()[0],
                                           len(copy), (" (first: %s)" % copy[0]) if copy else ""))
                        print("  " + tail_failure)
                        break
                    (tail_times if entries else base_times).append(took)
                    print("  tail trial %d, %d entries missed (%s restarted): PROTECTED %.0f ms "
                          "after the restart (PONG after %.0f ms); writes meanwhile: %s"
                          % (n + 1, entries, victim.name, took * 1000, pong * 1000, line))
                    sys.stdout.flush()
                if tail_failure:
                    print("  remaining tail trials skipped")
                    break
        if a.tail_trials and (not base_times or not tail_times):
            print("tail replay rate: no completed trial with and without missed writes")
        elif a.tail_trials:
            mb, mt = statistics.median(base_times), statistics.median(tail_times)
            print("restart to PROTECTED with no missed writes, %d trials: %s"
                  % (len(base_times), summary(base_times)))
            print("restart to PROTECTED with %d missed writes, %d trials: %s"
                  % (a.tail_n, len(tail_times), summary(tail_times)))
            net = ("%.0f entries/s" % (a.tail_n / (mt - mb))) if mt > mb > 0 else "not measurable"
            print("tail replay rate (medians): %s entries/s including the restart; net of the "
                  "no-write baseline: %s" % ("%.0f" % (a.tail_n / mt) if mt > 0 else "-", net))
            tails = (base_times, tail_times, net)

        copy = None
        if a.copy_mb:
            set_config(cl, "ping_timeout_ms", 1000)
            victim = backup_only(cl, ds)
            nbytes, span, took, ncopies = copy_trial(cl, ds, a.client, victim, a.copy_mb)
            rate = nbytes / span / 1e6 if span > 0 else float("inf")
            print("full copy: %d copies, %.1f MB in %.2f s from the first copy's start to the "
                  "last install: %.0f MB/s; restart to PROTECTED %.2f s"
                  % (ncopies, nbytes / 1e6, span, rate, took))
            copy = (nbytes, span, rate, took)

        print()
        print("| event | ping_timeout | trials | median | p90 | min | max |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, pt, t in rows:
            print("| %s of a primary -> first write on its partition | %d ms | %d | %.0f ms | "
                  "%.0f ms | %.0f ms | %.0f ms |"
                  % (label, pt, len(t), statistics.median(t) * 1000,
                     harness.percentile(t, 90) * 1000, min(t) * 1000, max(t) * 1000))
        if tails:
            for what, t in (("restart -> PROTECTED, no missed writes", tails[0]),
                            ("restart -> PROTECTED, %d missed writes" % a.tail_n, tails[1])):
                print("| %s | 1000 ms | %d | %.0f ms | %.0f ms | %.0f ms | %.0f ms |"
                      % (what, len(t), statistics.median(t) * 1000,
                         harness.percentile(t, 90) * 1000, min(t) * 1000, max(t) * 1000))
        if copy:
            print("| full copy of %.0f MB (%s), first start -> last install | 1000 ms | 1 | "
                  "%.0f MB/s | | | |" % (copy[0] / 1e6, "%.2f s" % copy[1], copy[2]))
        ok = True
    finally:
        problems = cl.teardown()
        if problems:
            print("process problems: " + "; ".join(problems))
            ok = False
        if not ok:
            print(cl.log_report(30))
        if a.keep or not ok:
            print("data and logs kept in %s" % base)
        elif not a.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
