"""Crash recovery: writers load the server, it is killed with SIGKILL in the
middle, restarted on the same data directory, and the data is checked.

With --sync always every acknowledged write must survive: each acknowledged
PUT is there with its value (or a later one), each counter is at least its
acknowledged count and at most acknowledged + in flight. With the default
--sync batch only consistency is required. In both modes SEARCH must agree
with GET (indexes and objects come from the same transactions) and nothing
may be corrupt.

Bounded: a few kill cycles, each with about 1-2 s of load, seeded timing."""

import random
import threading
import time

import keel

CRASH_SPACE = ("space crash\nkey k\nattributes g, int v, s\nsubspace g\nsubspace v\n"
               "create 8 partitions\n")
NTHREADS = 3
NCOUNTERS = 3


class Ledger:
    """What the writers attempted and what the server acknowledged."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempted = {}   # key -> value dict (keys are written once)
        self.acked = set()
        self.cnt_attempted = [0] * NCOUNTERS
        self.cnt_acked = [0] * NCOUNTERS
        self.cnt_max_seen = [0] * NCOUNTERS
        self.last_attempted = {}  # "last-t" key -> highest seq sent
        self.last_acked = {}      # "last-t" key -> highest seq acknowledged
        self.errors = []          # replies other than success or a broken connection


def writer(host, port, ledger, cycle, t, stop):
    c = keel.Client(host, port, timeout=5)
    try:
        i = 0
        while not stop.is_set() and i < 200000:
            k = "c%d-t%d-%d" % (cycle, t, i)
            val = {"g": "g%d" % t, "v": i, "s": "val-%s" % k}
            with ledger.lock:
                ledger.attempted[k] = val
            c.put("crash", k, val)
            with ledger.lock:
                ledger.acked.add(k)
            if i % 5 == 0:
                j = (i // 5 + t) % NCOUNTERS
                with ledger.lock:
                    ledger.cnt_attempted[j] += 1
                r = c.atomic_add("crash", "cnt%d" % j, {"v": 1})["v"]
                with ledger.lock:
                    ledger.cnt_acked[j] += 1
                    ledger.cnt_max_seen[j] = max(ledger.cnt_max_seen[j], r)
            if i % 7 == 0:
                lk = "last-t%d" % t
                seq = cycle * 1000000 + i
                with ledger.lock:
                    ledger.last_attempted[lk] = seq
                c.put("crash", lk, {"g": "last", "v": seq})
                with ledger.lock:
                    ledger.last_acked[lk] = seq
            i += 1
    except keel.KeelError as e:
        if e.code != "CONNECTION":
            ledger.errors.append(e)
    finally:
        c.close()


def load_and_kill(server, ledger, cycle, rng):
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(server.host, server.port, ledger, cycle, t,
                                                     stop)) for t in range(NTHREADS)]
    for th in threads:
        th.start()
    time.sleep(rng.uniform(1.0, 2.0))
    server.kill9()
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads), "a writer hung after the kill"
    assert not ledger.errors, ledger.errors[:3]


def fetch_all(server, ledger):
    """GET of every key that may exist, and SEARCH results, after restart."""
    c = server.client(timeout=30)
    keys = sorted(ledger.attempted) + ["cnt%d" % j for j in range(NCOUNTERS)] \
        + sorted(ledger.last_attempted)
    gets = {}
    for k in keys:
        g = c.get("crash", k)
        if g is not None:
            gets[k] = g
    everything = {o.pop("k"): o for o in c.search("crash")}
    return c, gets, everything


def check_search_agrees_with_get(c, ledger, gets, everything):
    known = set(ledger.attempted) | {"cnt%d" % j for j in range(NCOUNTERS)} \
        | set(ledger.last_attempted)
    assert set(everything) <= known, "SEARCH found keys nobody wrote: %s" % \
        sorted(set(everything) - known)[:5]
    assert set(everything) == set(gets), "SEARCH and GET disagree on keys: %s" % \
        sorted(set(everything) ^ set(gets))[:5]
    for k, o in everything.items():
        assert o == gets[k], (k, o, gets[k])
    assert c.count("crash") == len(gets)
    # Index paths: equality on g, ranges on v.
    for t in range(NTHREADS):
        want = {k for k, o in gets.items() if o["g"] == "g%d" % t}
        got = {o["k"] for o in c.search("crash", {"g": "g%d" % t})}
        assert got == want, ("g%d" % t, sorted(got ^ want)[:5])
        assert c.count("crash", {"g": "g%d" % t}) == len(want)
    for lo, hi in ((0, 50), (100, 1000), (1000000, 3000000)):
        want = {k for k, o in gets.items() if lo <= o["v"] < hi}
        got = {o["k"] for o in c.search("crash", {"v": [(">=", lo), ("<", hi)]})}
        assert got == want, ((lo, hi), sorted(got ^ want)[:5])


def check_values_well_formed(ledger, gets):
    """Whatever is there is exactly something a writer sent."""
    for k, o in gets.items():
        if k in ledger.attempted:
            assert o == ledger.attempted[k], (k, o)
        elif k.startswith("cnt"):
            j = int(k[3:])
            assert 0 <= o["v"] <= ledger.cnt_attempted[j], (k, o, ledger.cnt_attempted[j])
        else:
            assert o["g"] == "last" and o["v"] <= ledger.last_attempted[k], (k, o)


def check_durable(ledger, gets):
    lost = sorted(k for k in ledger.acked if k not in gets)
    assert not lost, "%d acknowledged PUTs lost, e.g. %s" % (len(lost), lost[:5])
    for j in range(NCOUNTERS):
        v = gets["cnt%d" % j]["v"]
        assert v >= ledger.cnt_acked[j] and v >= ledger.cnt_max_seen[j], \
            ("counter lost acknowledged ADDs", j, v, ledger.cnt_acked[j], ledger.cnt_max_seen[j])
        assert v <= ledger.cnt_attempted[j], ("counter above attempts", j, v)
    for lk, seq in ledger.last_acked.items():
        v = gets[lk]["v"]
        assert seq <= v <= ledger.last_attempted[lk], (lk, v, seq, ledger.last_attempted[lk])


def setup_space(server):
    with server.admin() as a:
        a.add_space(CRASH_SPACE)
    with server.client() as c:
        for j in range(NCOUNTERS):
            c.put("crash", "cnt%d" % j, {"g": "counter", "v": 0})


def run_cycles(server, cycles, seed, durable):
    setup_space(server)
    ledger = Ledger()
    rng = random.Random(seed)
    for cycle in range(cycles):
        load_and_kill(server, ledger, cycle, rng)
        server.start()
        c, gets, everything = fetch_all(server, ledger)
        check_values_well_formed(ledger, gets)
        if durable:
            check_durable(ledger, gets)
        check_search_agrees_with_get(c, ledger, gets, everything)
        # The restarted server takes writes and they are searchable at once.
        ledger.attempted["after-%d" % cycle] = {"g": "after", "v": -1 - cycle, "s": ""}
        c.put("crash", "after-%d" % cycle, {"g": "after", "v": -1 - cycle})
        assert [o["k"] for o in c.search("crash", {"g": "after", "v": -1 - cycle})] == \
            ["after-%d" % cycle]
        c.delete("crash", "after-%d" % cycle)
        c.close()
    assert len(ledger.acked) > 0


def test_kill9_with_sync_always_loses_no_acknowledged_write(server):
    server.restart(["--sync", "always"])
    run_cycles(server, cycles=3, seed=1234, durable=True)


def test_kill9_with_sync_batch_stays_consistent(server):
    run_cycles(server, cycles=2, seed=5678, durable=False)
