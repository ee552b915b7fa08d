#!/usr/bin/python3
"""coordinator_bench: leader failover time and committed map changes per second.

    /usr/bin/python3 bench/coordinator_bench.py [--trials 10] [--clients 8]
        [--depth 8] [--seconds 5] [--coordinators 3] [--keep] [--dir DIR]

Starts real `keel coordinator` processes ($KEEL_BIN, else build/keel) on
their own loopback addresses with DEFAULT timings (no --tick-ms: 100 ms tick,
election timeout 1-2 s), through tests/cluster/harness.py.

1. Failover: `--trials` times, with every coordinator up and caught up, the
   leader is killed with SIGKILL; from that instant a client sends
   `CLUSTER.CONFIG SET reprotect_delay_s N` to the survivors in turn, a new
   attempt every 20 ms after a -TRYAGAIN or a connection error (each attempt
   waits at most 250 ms for its answer), until one is acknowledged (+OK).
   The time from the kill to that acknowledgement is the failover time. The
   killed coordinator is restarted and caught up before the next trial.
   Reports median, p90 (nearest rank), min and max.
2. Throughput: `--clients` connections, each keeping `--depth`
   `CLUSTER.CONFIG SET reprotect_delay_s N` requests in flight, for
   `--seconds` seconds, once with every client on the leader and once spread
   over all coordinators (followers forward to the leader). Counts the +OK
   replies that arrived in the window (commits per second), and checks the
   map version grew by at least that much.

Exit status 0 when the runs completed (whatever the numbers), 1 otherwise.
"""

import argparse
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "cluster"))

import harness  # noqa: E402
from harness import ProtocolError, RespError  # noqa: E402

RETRY_S = 0.02
ATTEMPT_TIMEOUT_S = 0.25


def wait_all_healthy(cl, timeout=30):
    """Until a leader exists, sees every coordinator reachable, and every map
    is the same."""
    def check():
        lead = cl.leader()
        if lead is None:
            return None
        st = lead.status()
        if len(st["coordinators"]) != len(cl.coordinators):
            return None
        if not all(e["reachable"] and e["voter"] for e in st["coordinators"]):
            return None
        return lead
    lead = harness.wait_for(check, timeout, "every coordinator reachable from a leader")
    cl.wait_converged(timeout=timeout)
    return lead


def failover_trial(cl, n):
    lead = wait_all_healthy(cl)
    time.sleep(0.5)
    survivors = [c for c in cl.coordinators if c is not lead]
    t0 = time.monotonic()
    lead.kill9()
    i = 0
    while True:
        c = survivors[i % len(survivors)]
        i += 1
        try:
            r = c.call("CLUSTER.CONFIG", "SET", "reprotect_delay_s", str(1000 + n),
                       timeout=ATTEMPT_TIMEOUT_S)
            if r == "OK":
                took = time.monotonic() - t0
                break
            raise AssertionError("unexpected reply %r" % r)
        except RespError as e:
            if e.code not in ("TRYAGAIN", "NOQUORUM"):
                raise
        except (OSError, ProtocolError):
            pass
        if time.monotonic() - t0 > 60:
            raise AssertionError("no write acknowledged within 60 s of the leader kill")
        time.sleep(RETRY_S)
    lead.restart()
    return took, i


def throughput(cl, clients, depth, seconds, spread):
    lead = wait_all_healthy(cl)
    v0 = lead.status()["map_version"]
    targets = cl.coordinators if spread else [lead]
    counts = [0] * clients
    errors = []
    start_evt = threading.Event()
    box = {}

    def client(k):
        node = targets[k % len(targets)]
        try:
            with harness.Conn(node.host, node.port, timeout=10) as conn:
                seq = k * 10000000
                start_evt.wait()
                end = box["end"]
                inflight = 0
                for _ in range(depth):
                    seq += 1
                    conn.send("CLUSTER.CONFIG", "SET", "reprotect_delay_s", str(seq % 600000))
                    inflight += 1
                while inflight:
                    r = conn.read()
                    inflight -= 1
                    now = time.monotonic()
                    if r == "OK":
                        if now <= end:
                            counts[k] += 1
                    else:
                        errors.append(str(r))
                    if now < end:
                        seq += 1
                        conn.send("CLUSTER.CONFIG", "SET", "reprotect_delay_s",
                                  str(seq % 600000))
                        inflight += 1
        except (OSError, ProtocolError) as e:
            errors.append("client %d: %s" % (k, e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    box["end"] = time.monotonic() + seconds
    start_evt.set()
    for t in threads:
        t.join(timeout=seconds + 60)
    v1 = cl.wait_leader().status()["map_version"]
    total = sum(counts)
    return total / seconds, total, v1 - v0, errors


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
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--coordinators", type=int, default=3)
    ap.add_argument("--dir", help="base directory for the data (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    a = ap.parse_args()
    if a.trials < 1 or a.clients < 1 or a.depth < 1 or a.seconds <= 0 or a.coordinators < 3:
        ap.error("need trials, clients, depth >= 1, seconds > 0, coordinators >= 3")

    base = a.dir or tempfile.mkdtemp(prefix="keel-coord-bench-")
    print("keel coordinator bench: %s; %s; data in %s" % (harness.KEEL_BIN, machine(), base))
    print("default timings (no --tick-ms); %d coordinators" % a.coordinators)
    ok = False
    cl = harness.Cluster(base, tick_ms=None)
    try:
        cl.start_coordinators(a.coordinators)
        times = []
        for n in range(a.trials):
            took, attempts = failover_trial(cl, n)
            times.append(took)
            print("  failover trial %d: %.0f ms (%d attempts)" % (n + 1, took * 1000, attempts))
            sys.stdout.flush()
        print("failover after kill -9 of the leader, kill -> first acknowledged write, "
              "%d trials: median %.0f ms, p90 %.0f ms, min %.0f ms, max %.0f ms"
              % (len(times), statistics.median(times) * 1000,
                 harness.percentile(times, 90) * 1000, min(times) * 1000, max(times) * 1000))

        for spread in (False, True):
            rate, total, dv, errors = throughput(cl, a.clients, a.depth, a.seconds, spread)
            print("map changes committed per second, %d coordinators, %d clients x %d in "
                  "flight, %.0f s, %s: %.0f/s (%d acknowledged, map version +%d, %d errors%s)"
                  % (a.coordinators, a.clients, a.depth, a.seconds,
                     "spread over all coordinators" if spread else "all on the leader",
                     rate, total, dv, len(errors),
                     (": " + "; ".join(errors[:3])) if errors else ""))
            if dv < total:
                print("ERROR: map version grew by %d but %d changes were acknowledged"
                      % (dv, total))
                return 1
            sys.stdout.flush()
        ok = True
    except (AssertionError, OSError, RespError, ProtocolError, socket.timeout) as e:
        print("bench failed: %s" % e)
        print(cl.log_report(lines=30))
    finally:
        problems = cl.teardown()
        for p in problems:
            print("problem: %s" % p)
        if not a.keep and not a.dir and ok and not problems:
            shutil.rmtree(base, ignore_errors=True)
        elif not ok or problems:
            print("logs kept in %s" % base)
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
