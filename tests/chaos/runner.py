#!/usr/bin/python3
"""runner: seeded chaos runs of a real keel cluster (issue 5 items 5 and 6).

    /usr/bin/python3 tests/chaos/runner.py --seed 7 --time 60     # one run
    /usr/bin/python3 tests/chaos/runner.py --runs 20 --time 60    # seeds 1..20
    make chaos SEED=7 TIME=60 / make chaos-many RUNS=20

One run: 3 coordinators (20 ms tick) and 3-5 daemons, each on its own
loopback address; heartbeat_ms 100, ping_timeout_ms 1000,
reprotect_delay_s 2; spaces reg/set/ctr with tolerate 1 or 2; the workloads
of workloads.py; a nemesis schedule drawn from the seed (kill, pause,
partition, leader kill, restart, or mixed with overlapping faults, and gaps
short enough that a fault lands during re-protection or rejoin). At the end
every fault is healed, the cluster must recover (every daemon ONLINE, every
partition serving and fully protected), the set and counter are read once
more, and the checkers of checkers.py judge the history. The report gives
the operations (ok / fail / info), each checker's verdict, and the recovery
time after each fault. Exit status 0 only if every checker passed and the
cluster recovered.

On failure the run folder (printed; default /tmp/keel-chaos/seed-N) keeps
every node's log, history.jsonl, schedule.json and report.txt; on success it
is deleted unless --keep.

The seed fixes the cluster's shape, the schedule and every random choice of
the nemesis and the clients; timings of real processes are not
reproducible, so a failing seed may need a few runs to fail again.

Network faults need nftables and root (nemesis.py); without them the
partition faults of a schedule are replaced by process faults and the report
says so.
"""

import argparse
import json
import os
import random
import shutil
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))
sys.path.insert(0, HERE)

import harness  # noqa: E402
import history  # noqa: E402
import nemesis as nem  # noqa: E402
import workloads  # noqa: E402
from harness import ProtocolError, RespError, wait_for  # noqa: E402

PING_TIMEOUT_MS = 1000
HEARTBEAT_MS = 100
REPROTECT_S = 2
RECOVERY_TIMEOUT = 60.0     # after the final heal
SCHEDULES = ("kill", "pause", "partition", "leader-kill", "restart", "mixed")
SHAPES = ("one", "halves", "primaries", "leader", "ring", "bridge")


# -- the cluster's state -------------------------------------------------------------------

def cluster_state(cl):
    """(serving, protected, why-not) seen from outside: a coordinator leader
    agreed by a majority; every started daemon ONLINE; a COUNT of every space
    answered through a live daemon (COUNT fans out to every partition's
    primary); protected when the leader says fully_protected."""
    lead = cl.leader()
    if lead is None:
        return False, False, "no coordinator leader"
    try:
        st = lead.status(stale=False, timeout=1.0)
    except (OSError, RespError, ProtocolError, ValueError) as e:
        return False, False, "CLUSTER.STATUS: %s" % e
    want = {d.addr for d in cl.daemons if d.runs > 0}
    online = {e["address"] for e in st.get("daemons", []) if e.get("state") == "ONLINE"}
    if not want <= online:
        return False, False, "daemons not ONLINE: %s" % sorted(want - online)
    for d in cl.daemons:
        if not d.live():
            return False, False, "%s not running" % d.name
        for space in (workloads.REG_SPACE, workloads.SET_SPACE, workloads.CTR_SPACE):
            try:
                r = d.call("COUNT", space, timeout=1.0)
            except (OSError, RespError, ProtocolError) as e:
                return False, False, "COUNT %s via %s: %s" % (space, d.name, e)
            if not isinstance(r, int):
                return False, False, "COUNT %s via %s: %r" % (space, d.name, r)
    prot = st.get("protection", {}).get("fully_protected") is True
    return True, prot, None if prot else "not fully protected: %s" % st.get("protection")


# -- schedules -------------------------------------------------------------------------------

class Schedule:
    """The fault loop of one run, driven by the run's rng. Each step: wait a
    gap (short gaps land the next fault during recovery), apply one fault or
    a combination, hold it, undo it, then measure recovery during the next
    gap."""

    def __init__(self, name, rng, nemesis, cluster, tolerate, net_ok, log):
        self.name = name
        self.rng = rng
        self.n = nemesis
        self.cl = cluster
        self.tolerate = tolerate
        self.net_ok = net_ok
        self.log = log
        self.faults = []           # {t, what, held_s, recovered_s, protected_s, note}
        self.substituted = 0       # partition faults replaced for lack of nftables

    def kinds(self):
        if self.name == "mixed":
            return ["kill", "pause", "partition", "leader-kill", "restart", "combo"]
        return [self.name]

    def _pick_daemons(self, k):
        ds = [d for d in self.cl.daemons if d.live()]
        return self.rng.sample(ds, min(k, len(ds)))

    def _pick_node(self):
        """A daemon mostly, a coordinator sometimes."""
        if self.rng.random() < 0.25:
            cs = [c for c in self.cl.coordinators if c.live() and not c.removed]
            if cs:
                return self.rng.choice(cs)
        return self._pick_daemons(1)[0]

    def apply(self, kind):
        """Applies one fault; returns (description, undo function)."""
        if kind == "partition" and not self.net_ok:
            self.substituted += 1
            kind = self.rng.choice(["kill", "pause"])
        if kind == "kill":
            # up to `tolerate` daemons, or one coordinator
            if self.rng.random() < 0.2:
                victims = [self.rng.choice([c for c in self.cl.coordinators if c.live()])]
            else:
                victims = self._pick_daemons(self.rng.randint(1, self.tolerate))
            for v in victims:
                self.n.kill(v)
            return ("kill -9 %s" % " ".join(v.name for v in victims),
                    lambda: [self.n.start(v) for v in victims])
        if kind == "pause":
            victims = [self._pick_node()]
            if self.rng.random() < 0.3 and self.tolerate > 1:
                victims += [d for d in self._pick_daemons(1) if d not in victims]
            for v in victims:
                self.n.pause(v)
            return ("SIGSTOP %s" % " ".join(v.name for v in victims),
                    lambda: [self.n.resume(v) for v in victims])
        if kind == "partition":
            shape = self.rng.choice(SHAPES)
            ev = self.n.partition(shape)
            if ev is None:
                ev = self.n.partition("one")
            return ("%s: %s" % (ev["kind"], ev["detail"]), self.n.heal_net)
        if kind == "leader-kill":
            ev = self.n.kill_leader()
            if ev is None:
                return ("leader-kill skipped (no leader agreed)", lambda: None)
            victim = [c for c in self.n.down if c.kind == "coordinator"]
            return (ev["detail"], lambda: [self.n.start(c) for c in victim])
        if kind == "restart":
            if self.rng.random() < 0.3:
                self.n.full_restart()
                return ("full clean restart", lambda: None)
            v = self._pick_node()
            self.n.clean_restart(v)
            return ("clean restart of %s" % v.name, lambda: None)
        if kind == "combo":
            a = self.rng.choice(["kill", "pause", "leader-kill"])
            b = "partition" if self.net_ok else self.rng.choice(["kill", "pause"])
            if a == "kill" and b == "kill":
                b = "pause"
            d1, u1 = self.apply(a)
            d2, u2 = self.apply(b)

            def undo():
                u2()
                u1()
            return ("%s + %s" % (d1, d2), undo)
        raise ValueError(kind)

    def run(self, deadline, t0):
        kinds = self.kinds()
        pending = None             # the last healed fault, waiting for recovery
        while True:
            gap = self.rng.uniform(0.2, 1.0) if self.rng.random() < 0.35 \
                else self.rng.uniform(2.0, 5.0)
            pending = self._measure(pending, min(time.monotonic() + gap, deadline))
            if time.monotonic() >= deadline - 1.0:
                break
            kind = self.rng.choice(kinds)
            hold = self.rng.uniform(1.0, 6.0)
            if kind == "partition" or (kind == "combo" and self.net_ok):
                hold = self.rng.uniform(1.0, 8.0)
            start = time.monotonic()
            rec = {"t": round(start - t0, 3), "kind": kind, "landed_during_recovery":
                   pending is not None and pending.get("recovered_s") is None}
            try:
                what, undo = self.apply(kind)
            except harness.StartError as e:
                rec.update(what="fault %s failed: %s" % (kind, str(e).splitlines()[0]))
                self.faults.append(rec)
                raise
            rec["what"] = what
            self.faults.append(rec)
            end = min(start + hold, deadline)
            while time.monotonic() < end:
                time.sleep(0.05)
            undo()
            rec["held_s"] = round(time.monotonic() - start, 3)
            rec["healed_at"] = time.monotonic()
            rec["recovered_s"] = None
            rec["protected_s"] = None
            pending = rec
        return pending

    def _measure(self, rec, until):
        """Polls the cluster until `until`; fills rec's recovery times.
        Returns rec while it has not recovered (serving), else None."""
        while time.monotonic() < until:
            if rec is None:
                time.sleep(min(0.1, max(0.0, until - time.monotonic())))
                continue
            serving, prot, _ = cluster_state(self.cl)
            now = time.monotonic()
            if serving and rec["recovered_s"] is None:
                rec["recovered_s"] = round(now - rec["healed_at"], 3)
            if prot and rec["protected_s"] is None:
                rec["protected_s"] = round(now - rec["healed_at"], 3)
                return None
            time.sleep(0.1)
        return rec


# -- checking ------------------------------------------------------------------------------

def _lin_text(r):
    if r["valid"] is True:
        return "%d keys linearizable (%d search steps, %d unknown writes dropped)" % (
            r["keys"], r["steps"], r["dropped"])
    if r["failures"]:
        return "\n".join(f["explanation"] or "key %r not linearizable" % (f["key"],)
                         for f in r["failures"])
    return "search gave up (effort bound) on keys %s" % (r["unknown_keys"],)


def _set_text(r):
    if "lost_count" not in r:
        return r.get("reason", "no verdict")
    return ("%d attempted, %d acknowledged, %d present in the final read; lost %d %s; "
            "unexpected %d %s; failed but present %d %s; unknown adds present %d, absent %d"
            % (r["attempted"], r["acknowledged"], r["present"], r["lost_count"], r["lost"],
               r["unexpected_count"], r["unexpected"], r["failed_present_count"],
               r["failed_present"], r["recovered"], r["unknown_absent"]))


def _counter_text(r):
    t = "%d observations checked; %d out of bounds" % (r["observations"], r["error_count"])
    for e in r["errors"]:
        t += "\n%s: value %s outside %s" % (e["op"], e["value"], e["bounds"])
    for k, f in r["finals"].items():
        t += "; final read of %s %s (acknowledged %s, unknown up to %s)" % (
            k, f["read"], f["acked_sum"], f["unknown_sum"])
    return t


def _primary_text(r):
    if r["valid"] is True:
        return "no two daemons served one partition at once (%d partitions)" % len(
            r["intervals"])
    return "\n".join("partition %d/%d served by %s (epochs %s) at once from %s to %s (%d ms)"
                     % (o["space"], o["partition"], " and ".join(o["daemons"]), o["epochs"],
                        o["start"], o["end"], o["ms"]) for o in r["overlaps"])


def run_checkers(events, cluster, down_periods):
    """[(name, verdict, text, raw result)] with verdict True / False /
    "unknown", from checkers.py. Each checker gets only its workload's
    events (the register keys, the set key, the counter key)."""
    import checkers  # imported late so a broken checkers.py still lets the cluster run
    reg_keys = {"r%d" % i for i in range(100)}
    reg = [e for e in events if e.get("key") in reg_keys]
    st = [e for e in events if e.get("key") == workloads.SET_KEY]
    ctr = [e for e in events if e.get("key") == workloads.CTR_KEY]
    out = []
    r = checkers.check_linearizable(reg)
    out.append(("linearizable", r["valid"], _lin_text(r), r))
    r = checkers.check_set(st)
    out.append(("set", r["valid"], _set_text(r), r))
    r = checkers.check_counter(ctr, initial=0)
    out.append(("counter", r["valid"], _counter_text(r), r))
    logs = {d.name: "\n".join(d.log_text(i) for i in range(len(d.logs)))
            for d in cluster.daemons}
    down = {name: [tuple(p) for p in ps] for name, ps in down_periods.items()}
    r = checkers.check_single_primary(logs, down=down)
    out.append(("single-primary", r["valid"], _primary_text(r), r))
    return out


# -- one run --------------------------------------------------------------------------------

def run_one(seed, duration, out_dir, schedule=None, keep=False, log=print):
    """One seeded run; returns a result dict (see report())."""
    rng = random.Random(seed)
    # seeds take the schedules in turn, so any N consecutive seeds cover them
    sched_name = schedule or SCHEDULES[(seed - 1) % len(SCHEDULES)]
    ndaemons = rng.randint(3, 5)
    tolerate = rng.choice((1, 2)) if ndaemons >= 4 else rng.choice((1, 1, 2))
    partitions = rng.choice((2, 4, 8))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    why_no_net = nem.nft_unavailable()
    result = {"seed": seed, "time_s": duration, "schedule": sched_name, "daemons": ndaemons,
              "tolerate": tolerate, "partitions": partitions, "dir": out_dir,
              "network_faults": why_no_net or "nftables", "faults": [], "checkers": [],
              "ops": {}, "errors": {}, "problems": [], "passed": False}
    log("seed %d: schedule %s, 3 coordinators, %d daemons, tolerate %d, %d partitions, %ds; "
        "folder %s" % (seed, sched_name, ndaemons, tolerate, partitions, duration, out_dir))
    if why_no_net:
        log("network faults unavailable (%s): partitions become process faults" % why_no_net)
    net = None
    cl = harness.Cluster(os.path.join(out_dir, "nodes"), tick_ms=20)
    wl = None
    down_periods = {}
    t0 = time.monotonic()
    nlog = open(os.path.join(out_dir, "nemesis.log"), "w")

    def nemlog(s):
        nlog.write(s + "\n")
        nlog.flush()
    try:
        if why_no_net is None:
            net = nem.Net()
        cl.start_coordinators(3)
        for name, value in (("ping_timeout_ms", PING_TIMEOUT_MS),
                            ("heartbeat_ms", HEARTBEAT_MS),
                            ("reprotect_delay_s", REPROTECT_S)):
            cl.write(["CLUSTER.CONFIG", "SET", name, str(value)])
        for _ in range(ndaemons):
            cl.add_daemon()
        lead = cl.wait_leader()
        wait_for(lambda: sum(d["state"] == "ONLINE" for d in lead.status()["daemons"])
                 == ndaemons, 15, "every daemon ONLINE")
        workloads.setup_spaces(cl, tolerate, partitions)
        wait_for(lambda: cluster_state(cl)[0], 30, "the cluster to serve every space")
        n = nem.Nemesis(cl, random.Random(rng.randrange(2 ** 63)), net, t0=time.monotonic(),
                        log=nemlog)
        wl = workloads.Workload(cl, random.Random(rng.randrange(2 ** 63)))
        sched = Schedule(sched_name, random.Random(rng.randrange(2 ** 63)), n, cl, tolerate,
                         net is not None, nemlog)
        t_start = time.monotonic()
        wl.start()
        pending = None
        try:
            pending = sched.run(t_start + duration, t_start)
        finally:
            n.heal_all()
            result["faults"] = sched.faults
            result["substituted"] = sched.substituted
            down_periods = n.down_periods
        # recovery after the final heal
        healed = time.monotonic()
        last = [None]

        def recovered():
            s, p, why = cluster_state(cl)
            last[0] = why
            return s and p
        try:
            wait_for(recovered, RECOVERY_TIMEOUT, "recovery after the final heal", interval=0.1)
            result["final_recovery_s"] = round(time.monotonic() - healed, 3)
            if pending is not None and pending.get("recovered_s") is None:
                pending["recovered_s"] = result["final_recovery_s"]
                pending["protected_s"] = result["final_recovery_s"]
        except harness.WaitTimeout as e:
            result["problems"].append("no recovery within %.0fs of the final heal: %s"
                                      % (RECOVERY_TIMEOUT, last[0]))
            log(str(e))
        time.sleep(1.0)            # some operations on the healed cluster
        wl.stop()
        wl.final_counter_read()
        wl.final_set_read()
    except Exception as e:  # noqa: BLE001 - any harness failure fails the run, with its trace
        result["problems"].append("run aborted: %s: %s" % (type(e).__name__, e))
        log(traceback.format_exc())
    finally:
        if wl is not None:
            try:
                wl.stop()
            except RuntimeError as e:
                result["problems"].append(str(e))
        if net is not None:
            net.close()
        result["problems"] += cl.teardown()
        nlog.close()
    events = wl.rec.snapshot() if wl is not None else []
    history.save(events, os.path.join(out_dir, "history.jsonl"))
    counts = {"ok": 0, "fail": 0, "info": 0}
    for e in events:
        if e["type"] in counts:
            counts[e["type"]] += 1
    result["ops"] = counts
    result["errors"] = wl.errors() if wl is not None else {}
    if events:
        try:
            for name, verdict, text, raw in run_checkers(events, cl, down_periods):
                result["checkers"].append({"name": name, "passed": verdict is True,
                                           "verdict": {True: "PASS", False: "FAIL"}.get(
                                               verdict, "UNKNOWN"), "text": text})
                with open(os.path.join(out_dir, "checker-%s.json" % name), "w") as f:
                    json.dump(raw, f, indent=1, default=repr, sort_keys=True)
        except Exception as e:  # noqa: BLE001
            result["problems"].append("checkers raised %s: %s" % (type(e).__name__, e))
            log(traceback.format_exc())
    result["passed"] = (not result["problems"] and bool(result["checkers"])
                        and all(c["passed"] for c in result["checkers"]))
    for f in result["faults"]:
        f.pop("healed_at", None)
    with open(os.path.join(out_dir, "schedule.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    text = report(result)
    with open(os.path.join(out_dir, "report.txt"), "w") as f:
        f.write(text)
    log(text)
    if result["passed"] and not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result


def report(r):
    lines = ["== keel chaos run: seed %d, schedule %s, %ds, %d daemons, tolerate %d, "
             "%d partitions" % (r["seed"], r["schedule"], r["time_s"], r["daemons"],
                                r["tolerate"], r["partitions"])]
    lines.append("network faults: %s%s" % (r["network_faults"],
                 (" (%d partitions replaced by process faults)" % r.get("substituted", 0))
                 if r.get("substituted") else ""))
    o = r["ops"]
    lines.append("operations: %d ok, %d fail, %d info; error replies %s"
                 % (o.get("ok", 0), o.get("fail", 0), o.get("info", 0),
                    json.dumps(r["errors"], sort_keys=True)))
    lines.append("faults (t = seconds after the workload started; recovery = healed to "
                 "serving / fully protected):")
    for f in r["faults"]:
        rec = f.get("recovered_s")
        prot = f.get("protected_s")
        lines.append("  %7.2fs %-11s %s; held %ss; recovery %s / %s%s"
                     % (f["t"], f["kind"], f.get("what", "?"), f.get("held_s", "?"),
                        "%.2fs" % rec if rec is not None else "next fault came first",
                        "%.2fs" % prot if prot is not None else "-",
                        " (landed during recovery)" if f.get("landed_during_recovery") else ""))
    if "final_recovery_s" in r:
        lines.append("final recovery after healing everything: %.2fs" % r["final_recovery_s"])
    for c in r["checkers"]:
        lines.append("checker %-16s %s%s" % (c["name"], c["verdict"],
                                             ("\n    " + c["text"].replace("\n", "\n    "))
                                             if c["text"] and not c["passed"] else
                                             ("  " + c["text"].splitlines()[0]
                                              if c["text"] else "")))
    for p in r["problems"]:
        lines.append("PROBLEM: %s" % p)
    lines.append("RESULT: %s%s" % ("PASS" if r["passed"] else "FAIL",
                                   "" if r["passed"] else "; logs and history kept in %s"
                                   % r["dir"]))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, help="one run with this seed")
    ap.add_argument("--runs", type=int, help="runs with seeds first-seed..first-seed+RUNS-1")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--time", type=float, default=60, help="seconds of faults per run")
    ap.add_argument("--schedule", choices=SCHEDULES, help="force one schedule")
    ap.add_argument("--out", default=os.environ.get("KEEL_CHAOS_DIR", "/tmp/keel-chaos"),
                    help="parent of the run folders (default /tmp/keel-chaos)")
    ap.add_argument("--keep", action="store_true", help="keep the folder of passing runs")
    a = ap.parse_args(argv)
    if (a.seed is None) == (a.runs is None):
        ap.error("give exactly one of --seed N and --runs N")
    if not os.path.exists(harness.KEEL_BIN):
        ap.error("no keel binary at %s (make -j2 all, or set KEEL_BIN)" % harness.KEEL_BIN)
    nem.install_signal_cleanup()
    seeds = [a.seed] if a.seed is not None else list(range(a.first_seed,
                                                           a.first_seed + a.runs))
    results = []
    for s in seeds:
        out = os.path.join(a.out, "seed-%d" % s)
        results.append(run_one(s, int(a.time), out, a.schedule, a.keep))
    if len(results) > 1:
        print("== summary: %d runs, %d passed" % (len(results),
                                                   sum(r["passed"] for r in results)))
        for r in results:
            bad = [c["name"] for c in r["checkers"] if not c["passed"]]
            print("  seed %-4d %-11s %s  ok %d fail %d info %d%s" % (
                r["seed"], r["schedule"], "PASS" if r["passed"] else "FAIL",
                r["ops"].get("ok", 0), r["ops"].get("fail", 0), r["ops"].get("info", 0),
                "" if r["passed"] else "  failed: %s %s; kept in %s"
                % (", ".join(bad), "; ".join(r["problems"])[:200], r["dir"])))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
