"""Tests of the chaos history format and checkers (history.py, checkers.py).

Run: /usr/bin/python3 -m pytest -q tests/chaos/test_checkers.py

Each checker gets histories that must pass, known-bad histories that must be
caught, and edge cases. Histories are built with explicit times (ms, turned
into ns) so the real-time order is exactly what the test says.
"""

import itertools
import os
import random
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import checkers  # noqa: E402
import history  # noqa: E402
from checkers import (INF, check_counter, check_linearizable, check_set,  # noqa: E402
                      check_single_primary)


class B:
    """History builder: op(p, f, key, arg, call_ms, ret_ms, type, result,
    error). type "info" with ret_ms=None leaves the invoke without a
    completion; with ret_ms it records an info completion then."""

    def __init__(self):
        self.raw = []

    def op(self, p, f, key, arg, call, ret, type_="ok", result=None, error=None):
        self.raw.append((int(call * 1e6), len(self.raw),
                         {"process": p, "type": "invoke", "f": f, "key": key, "value": arg}))
        if ret is not None:
            ev = {"process": p, "type": type_, "f": f, "key": key, "value": result}
            if error:
                ev["error"] = error
            self.raw.append((int(ret * 1e6), len(self.raw), ev))
        return self

    def w(self, p, key, v, call, ret, type_="ok"):
        return self.op(p, "write", key, v, call, ret, type_)

    def r(self, p, key, v, call, ret):
        return self.op(p, "read", key, None, call, ret, "ok", v)

    def cas(self, p, key, fr, to, call, ret, type_="ok", error=None):
        return self.op(p, "cas", key, [fr, to], call, ret, type_, None, error)

    def events(self):
        out = []
        for t, _, ev in sorted(self.raw, key=lambda x: (x[0], x[1])):
            ev = dict(ev, time=t)
            out.append(ev)
        return out


def lin(b, **kw):
    return check_linearizable(b.events(), **kw)


# ---- history -------------------------------------------------------------------------

def test_recorder_threads_pair_and_round_trip(tmp_path):
    rec = history.Recorder()

    def worker(p):
        for i in range(200):
            h = rec.invoke(p, "write", "k%d" % (i % 3), i)
            if i % 3 == 0:
                rec.ok(h)
            elif i % 3 == 1:
                rec.fail(h, error="CMPFAIL")
            else:
                rec.info(h)

    ts = [threading.Thread(target=worker, args=(p,)) for p in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ev = rec.snapshot()
    assert len(ev) == 4 * 200 * 2
    assert all(a["time"] <= b["time"] for a, b in zip(ev, ev[1:]))
    ops = history.pair(ev)
    assert len(ops) == 800
    assert sum(o.type == "ok" for o in ops) == 4 * 67
    assert all(o.ret is None for o in ops if o.type == "info")
    assert all(o.error == "CMPFAIL" for o in ops if o.type == "fail")
    path = tmp_path / "h.jsonl"
    history.save(ev, path)
    assert history.load(path) == ev


def test_pair_open_invoke_is_info_and_keeps_arg_and_result():
    ops = history.pair(B().op(1, "read", "k", None, 0, 1, "ok", 5)
                       .w(2, "k", 9, 0.5, None, "info").events())
    assert (ops[0].type, ops[0].result, ops[0].ret) == ("ok", 5, 1000000)
    assert (ops[1].type, ops[1].arg, ops[1].ret) == ("info", 9, None)
    assert "write('k', 9) info" in ops[1].describe()


@pytest.mark.parametrize("events,msg", [
    ([{"process": 1, "type": "ok", "f": "read", "key": "k", "time": 1}], "nothing outstanding"),
    ([{"process": 1, "type": "invoke", "f": "read", "key": "k", "time": 1},
      {"process": 1, "type": "invoke", "f": "read", "key": "k", "time": 2}], "outstanding"),
    ([{"process": 1, "type": "invoke", "f": "read", "key": "k", "time": 5},
      {"process": 1, "type": "ok", "f": "read", "key": "k", "time": 2}], "backwards"),
    ([{"process": 1, "type": "invoke", "f": "read", "key": "k", "time": 1},
      {"process": 1, "type": "ok", "f": "write", "key": "k", "time": 2}], "does not match"),
    ([{"process": 1, "type": "begin", "f": "read", "time": 1}], "unknown type"),
    ([{"process": 1, "type": "invoke", "f": "read", "time": 1.5}], "integer"),
    ([{"process": 1, "type": "invoke", "time": 1}], "no 'f'"),
])
def test_pair_rejects_malformed(events, msg):
    with pytest.raises(history.HistoryError, match=msg):
        history.pair(events)


def test_load_rejects_bad_lines(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"process": 1}\n\nnot json\n')
    with pytest.raises(history.HistoryError, match=":3: not JSON"):
        history.load(p)
    p.write_text('[1, 2]\n')
    with pytest.raises(history.HistoryError, match="not an object"):
        history.load(p)


def test_recorder_rejects_bad_completion_type():
    rec = history.Recorder()
    with pytest.raises(history.HistoryError):
        rec.complete(rec.invoke(1, "read", "k"), "invoke")


# ---- linearizability: must pass ------------------------------------------------------------

def test_empty_history_is_valid():
    res = check_linearizable([])
    assert res["valid"] is True and res["keys"] == 0 and res["failures"] == []


def test_sequential_register_is_valid():
    b = (B().r(1, "k", None, 0, 1).w(1, "k", 1, 2, 3).r(2, "k", 1, 4, 5)
         .cas(1, "k", 1, 2, 6, 7).r(2, "k", 2, 8, 9)
         .op(1, "delete", "k", None, 10, 11).r(2, "k", None, 12, 13))
    assert lin(b)["valid"] is True


def test_concurrent_writes_linearize_in_non_obvious_order():
    # w1 is invoked first, but a read sees 2 and a later one 1: w2 must come
    # before w1 although both overlap.
    b = (B().w(1, "k", 1, 0, 50).w(2, "k", 2, 5, 55)
         .r(3, "k", 2, 10, 20).r(4, "k", 1, 30, 40).r(3, "k", 1, 60, 70))
    assert lin(b)["valid"] is True


def test_cas_invoked_first_takes_effect_after_a_later_write():
    b = (B().cas(1, "k", 1, 3, 0, 100).w(2, "k", 1, 10, 20).r(3, "k", 3, 30, 40))
    assert lin(b)["valid"] is True


def test_read_concurrent_with_write_may_see_either_value():
    b = B().w(1, "k", 0, 0, 1).w(1, "k", 1, 10, 100).r(2, "k", 1, 20, 30).r(3, "k", 1, 40, 50)
    assert lin(b)["valid"] is True
    b = B().w(1, "k", 0, 0, 1).w(1, "k", 1, 10, 100).r(2, "k", 0, 20, 30).r(3, "k", 1, 40, 50)
    assert lin(b)["valid"] is True


def test_equal_timestamps_count_as_concurrent():
    # the read returns at the very instant the write is invoked: either order
    b = B().w(1, "k", 1, 0, 1).w(2, "k", 2, 5, 9).r(3, "k", 2, 2, 5)
    assert lin(b)["valid"] is True


def test_unknown_write_takes_effect_late():
    # timed out at 10 ms, still invisible at 100 ms, visible at 200 ms
    b = (B().w(1, "k", 5, 0, 10, "info").r(2, "k", None, 100, 110).r(2, "k", 5, 200, 210)
         .r(3, "k", 5, 300, 310))
    assert lin(b)["valid"] is True


def test_unknown_write_that_never_took_effect():
    b = B().w(1, "k", 5, 0, None, "info").r(2, "k", None, 100, 110).w(2, "k", 6, 120, 130) \
        .r(2, "k", 6, 140, 150)
    res = lin(b)
    assert res["valid"] is True
    assert res["dropped"] == 1  # design note 4: its value is never observed


def test_unknown_write_enabling_an_unknown_cas_is_kept():
    # 5 is never read, but the unknown cas 5 -> 7 needs it, and 7 is read
    b = B().w(1, "k", 5, 0, None, "info").cas(2, "k", 5, 7, 1, None, "info") \
        .r(3, "k", 7, 10, 11)
    res = lin(b)
    assert res["valid"] is True and res["dropped"] == 0


def test_identical_unknown_writes_and_many_open_ops_stay_tractable():
    # 40 unknown writes of values nobody reads, and CMPFAILs after them: they
    # cannot be dropped (design note 4), but are interchangeable (4b)
    b = B().w(0, "k", 1, 0, 1)
    for p in range(40):
        b.w(10 + p, "k", 1000 + p, 2 + p, None, "info")
    b.cas(99, "k", 1, 2, 100, 101, "fail", "CMPFAIL").r(98, "k", 1000 + 39, 102, 103)
    res = lin(b, max_steps=50_000)
    assert res["valid"] is True and res["dropped"] == 0
    b.r(97, "k", 1, 110, 111)  # the old value is gone for good
    f = _one_failure(lin(b, max_steps=50_000))
    assert "read('k') -> 1039" in f["explanation"] or "holds 1039" in f["explanation"]


def test_unknown_cas_may_or_may_not_apply():
    base = B().w(1, "k", 1, 0, 1).cas(2, "k", 1, 2, 5, 6, "info")
    assert lin(base.r(3, "k", 2, 50, 60))["valid"] is True
    base = B().w(1, "k", 1, 0, 1).cas(2, "k", 1, 2, 5, 6, "info")
    assert lin(base.r(3, "k", 1, 50, 60))["valid"] is True


def test_failed_cas_observations():
    # CMPFAIL is fine when a concurrent write changed the value
    b = B().w(1, "k", 1, 0, 1).w(2, "k", 7, 10, 30).cas(3, "k", 1, 2, 20, 40, "fail", "CMPFAIL")
    assert lin(b)["valid"] is True
    # NOTFOUND before any write
    b = B().cas(3, "k", 1, 2, 0, 1, "fail", "NOTFOUND").w(1, "k", 1, 2, 3)
    assert lin(b)["valid"] is True
    # other failures carry no information
    b = B().w(1, "k", 1, 0, 1).cas(3, "k", 1, 2, 2, 3, "fail", "TRYAGAIN").r(1, "k", 1, 4, 5)
    assert lin(b)["valid"] is True


def test_keys_are_independent():
    # same values and times on two keys: each key linearizable on its own
    b = (B().w(1, "a", 1, 0, 10).w(2, "b", 2, 0, 10).r(3, "a", 1, 20, 30)
         .r(4, "b", 2, 20, 30))
    res = lin(b)
    assert res["valid"] is True and res["keys"] == 2


# ---- linearizability: must be caught ------------------------------------------------------

def _one_failure(res, key="k"):
    assert res["valid"] is False, res
    assert [f["key"] for f in res["failures"]] == [key]
    return res["failures"][0]


def test_stale_read_after_acknowledged_write():
    b = B().w(1, "k", 1, 0, 10).w(1, "k", 2, 20, 30).r(2, "k", 1, 40, 50)
    f = _one_failure(lin(b))
    assert [o.index for o in f["window"]] == [1, 2]  # w2 and the stale read only
    assert "read('k') -> 1" in f["explanation"]
    assert "register holds 2" in f["explanation"]


def test_lost_acknowledged_write():
    b = B().w(1, "k", 1, 0, 10).r(2, "k", None, 20, 30)
    f = _one_failure(lin(b))
    assert "read not found while the register holds 1" in f["explanation"]


def test_value_of_a_failed_write_is_read():
    b = B().w(1, "k", 7, 0, 10, "fail").r(2, "k", 7, 20, 30)
    f = _one_failure(lin(b))
    assert "starting from 'not found'" in f["explanation"]


def test_cas_succeeds_twice_from_the_same_value():
    b = (B().w(1, "k", 0, 0, 1).cas(2, "k", 0, 1, 10, 30).cas(3, "k", 0, 2, 15, 35))
    f = _one_failure(lin(b))
    # from any initial state, two CAS from 0 cannot both succeed: the write
    # of 0 is not needed to prove it
    assert [o.index for o in f["window"]] == [1, 2]
    assert "expected 0" in f["explanation"]


def test_new_old_inversion_between_reads():
    # once a read saw the new value, a later read may not see the old one
    b = B().w(1, "k", 0, 0, 1).w(1, "k", 1, 10, 100).r(2, "k", 1, 20, 30).r(3, "k", 0, 40, 50)
    f = _one_failure(lin(b))
    assert {o.index for o in f["window"]} >= {2, 3}


def test_unknown_write_cannot_take_effect_before_its_invocation():
    b = B().r(1, "k", 5, 0, 10).w(2, "k", 5, 20, None, "info")
    _one_failure(lin(b))


def test_cmpfail_when_the_value_matched():
    b = B().w(1, "k", 1, 0, 1).cas(2, "k", 1, 2, 5, 6, "fail", "CMPFAIL")
    f = _one_failure(lin(b))
    assert "CMPFAIL" in f["explanation"]
    b = B().w(1, "k", 1, 0, 1).cas(2, "k", 1, 2, 5, 6, "fail", "NOTFOUND")
    f = _one_failure(lin(b))
    assert "NOTFOUND" in f["explanation"]


def test_violation_window_is_minimal_and_from_any_state():
    b = B()
    t = 0
    for i in range(60):  # a long valid prefix
        b.w(1 + i % 3, "k", i, t, t + 1).r(4, "k", i, t + 2, t + 3)
        t += 10
    b.w(1, "k", "x", t, t + 1).r(2, "k", 58, t + 2, t + 3)  # stale
    b.w(3, "other", 1, 0, 1).r(3, "other", 1, 2, 3)
    f = _one_failure(lin(b))
    assert [o.describe().split(" [")[0] for o in f["window"]] == [
        "#122 p1 write('k', 'x') ok", "#123 p2 read('k') -> 58 ok"]
    assert "from any initial state" in f["explanation"]
    assert "register holds 'x'" in f["explanation"]


def test_only_the_bad_key_is_reported():
    b = B().w(1, "good", 1, 0, 1).r(1, "good", 1, 2, 3).w(2, "bad", 1, 0, 1) \
        .r(2, "bad", None, 2, 3)
    _one_failure(lin(b), "bad")


def test_effort_bound_reports_unknown():
    b = B()
    for p in range(8):  # 8 concurrent writes and reads of each value: many orders
        b.w(p, "k", p, 0, 100)
    for p in range(8):
        b.r(10 + p, "k", (p * 3) % 8, 101 + p, 200)
    res = lin(b, max_steps=20)
    assert res["valid"] == "unknown" and res["unknown_keys"] == ["k"]
    assert lin(b)["valid"] in (True, False)


def test_cas_value_must_be_a_pair():
    with pytest.raises(history.HistoryError, match="from, to"):
        lin(B().op(1, "cas", "k", 5, 0, 1))


def _random_history(seed, n_ops=2000, keys=20, procs=5, info_rate=0.03):
    """A linearizable register history: each op takes effect at a random
    instant of its interval (an unknown one: after its invocation, or
    never), results computed in that order."""
    rnd = random.Random(seed)
    ops = []
    clock = [0.0] * procs
    for _ in range(n_ops):
        p = rnd.randrange(procs)
        call = clock[p] + rnd.uniform(0, 2)
        ret = call + rnd.uniform(0.1, 8)
        clock[p] = ret
        key = "k%d" % rnd.randrange(keys)
        r = rnd.random()
        f = "read" if r < 0.5 else ("write" if r < 0.8 else "cas")
        info = f != "read" and rnd.random() < info_rate
        point = rnd.uniform(call, ret)
        if info:
            point = rnd.choice([None, rnd.uniform(call, call + 200)])
        ops.append({"p": p, "f": f, "key": key, "call": call, "ret": ret, "point": point,
                    "info": info, "arg": rnd.randrange(6) if f != "read" else None,
                    "from": rnd.randrange(6)})
    state = {}
    for o in sorted((o for o in ops if o["point"] is not None), key=lambda o: o["point"]):
        cur = state.get(o["key"])
        if o["f"] == "read":
            o["result"] = cur
        elif o["f"] == "write":
            state[o["key"]] = o["arg"]
        else:
            o["ok"] = cur == o["from"]
            o["error"] = None if o["ok"] else ("NOTFOUND" if cur is None else "CMPFAIL")
            if o["ok"]:
                state[o["key"]] = o["arg"]
    b = B()
    for o in ops:
        if o["f"] == "read":
            b.r(o["p"], o["key"], o["result"], o["call"], o["ret"])
        elif o["f"] == "write":
            b.w(o["p"], o["key"], o["arg"], o["call"], o["ret"], "info" if o["info"] else "ok")
        elif o["info"]:
            b.cas(o["p"], o["key"], o["from"], o["arg"], o["call"], o["ret"], "info")
        elif o["ok"]:
            b.cas(o["p"], o["key"], o["from"], o["arg"], o["call"], o["ret"])
        else:
            b.cas(o["p"], o["key"], o["from"], o["arg"], o["call"], o["ret"], "fail",
                  o["error"])
    return b.events()


def test_performance_2000_ops_20_keys_5_processes():
    ev = _random_history(1)
    assert len(history.pair(ev)) == 2000
    res = check_linearizable(ev, max_steps=200_000)
    assert res["valid"] is True, res  # decided, not "unknown", and correct
    # the same history with one read made stale is caught
    ops = history.pair(ev)
    victim = next(o for o in reversed(ops) if o.f == "read" and o.type == "ok"
                  and o.result is not None)
    bad = [dict(e) for e in ev]
    n = 0
    for e in bad:
        if e["type"] == "ok" and e["f"] == "read" and e["process"] == victim.process \
                and e["time"] == victim.ret:
            e["value"] = 99
            n += 1
    assert n == 1
    res = check_linearizable(bad, max_steps=200_000)
    assert res["valid"] is False and [f["key"] for f in res["failures"]] == [victim.key]


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_random_linearizable_histories_pass(seed):
    ev = _random_history(seed, n_ops=400, keys=4, procs=5, info_rate=0.1)
    assert check_linearizable(ev)["valid"] is True


def _brute_force(ops):
    """Linearizability by enumeration, straight from the definitions: some
    subset of the unknown writes/cas plus every ok op (and CMPFAIL/NOTFOUND
    observation), in some order that respects real time, is legal for a
    register starting from not found."""
    must, maybe = [], []
    for o in ops:
        if o.type == "ok" or (o.f == "cas" and o.error in ("CMPFAIL", "NOTFOUND")):
            must.append(o)
        elif o.type == "info" and o.f != "read":
            maybe.append(o)

    def legal(seq):
        st = None
        for o in seq:
            if o.f == "read":
                if st != o.result:
                    return False
            elif o.f == "write":
                st = o.arg
            elif o.type == "fail":
                if o.error == "NOTFOUND" and st is not None:
                    return False
                if o.error == "CMPFAIL" and (st is None or st == o.arg[0]):
                    return False
            else:
                if st != o.arg[0]:
                    return False
                st = o.arg[1]
        return True

    def end(o):
        return float("inf") if o.type == "info" else o.ret

    for mask in range(1 << len(maybe)):
        chosen = must + [m for i, m in enumerate(maybe) if mask >> i & 1]
        for perm in itertools.permutations(chosen):
            if all(not (end(perm[j]) < perm[i].call) for i in range(len(perm))
                   for j in range(i + 1, len(perm))) and legal(perm):
                return True
    return False


def test_search_agrees_with_brute_force_on_small_random_histories():
    rnd = random.Random(7)
    verdicts = {True: 0, False: 0}
    for _ in range(400):
        b = B()
        for p in range(rnd.randint(1, 6)):
            call = rnd.randrange(10)
            ret = call + rnd.randrange(1, 6)
            f = rnd.choice(["read", "write", "cas"])
            v = rnd.choice([None, 1, 2]) if f == "read" else rnd.randrange(1, 3)
            kind = rnd.choice(["ok", "ok", "ok", "info", "fail"])
            if f == "read":
                b.r(p, "k", v, call, ret)
            elif f == "write":
                b.w(p, "k", v, call, ret if kind != "info" or rnd.random() < 0.5 else None,
                    kind)
            else:
                b.cas(p, "k", rnd.randrange(1, 3), v, call, ret, kind,
                      rnd.choice(["CMPFAIL", "NOTFOUND", "TRYAGAIN"]) if kind == "fail"
                      else None)
        ev = b.events()
        want = _brute_force(history.pair(ev))
        got = check_linearizable(ev)
        assert got["valid"] is want, [o.describe() for o in history.pair(ev)]
        verdicts[want] += 1
        for f in got["failures"]:  # every reported window is itself a violation
            assert f["window"] and "cannot be linearized" in f["explanation"]
    assert min(verdicts.values()) > 50, verdicts


def _key_eops(ev, key):
    ops = [o for o in history.pair(ev) if o.key == key]
    return checkers._register_ops(ops)[0]


def test_window_of_a_valid_history_is_valid():
    # w1 took effect before 15 ms; in the window [30, 120] it straddles the
    # start and must be allowed to have taken effect before the window
    ev = (B().w(1, "k", 1, 0, 100).r(2, "k", 1, 10, 15).w(3, "k", 2, 20, 25)
          .r(4, "k", 2, 30, 35).r(4, "k", 2, 110, 120)).events()
    eops = _key_eops(ev, "k")
    w = checkers._window(eops, 30e6, 120e6)
    assert [e.op.index for e in w] == [0, 3, 4] and w[0].optional
    assert checkers._search(w, checkers.ANY, 10_000)[0] == "ok"


def test_every_window_of_random_valid_histories_is_valid():
    # design note 6: a window only relaxes the history, so it never fails
    # where the whole history passes
    rnd = random.Random(11)
    for seed in range(5):
        ev = _random_history(100 + seed, n_ops=150, keys=2, procs=4, info_rate=0.1)
        for key in ("k0", "k1"):
            eops = _key_eops(ev, key)
            times = sorted({e.call for e in eops} | {e.ret for e in eops if e.ret != INF})
            for _ in range(30):
                a, b = sorted(rnd.sample(times, 2))
                v = checkers._search(checkers._window(eops, a, b), checkers.ANY, 100_000)[0]
                assert v == "ok", (seed, key, a, b)


def test_command_line(tmp_path, capsys):
    p = tmp_path / "h.jsonl"
    history.save(B().w(1, "k", 1, 0, 10).r(2, "k", None, 20, 30).events(), p)
    assert checkers.main(["checkers.py", "linearizable", str(p)]) == 1
    out = capsys.readouterr().out
    assert "cannot be linearized" in out
    assert checkers.main(["checkers.py"]) == 2


# ---- set ---------------------------------------------------------------------------------

def _set_hist(adds, reads):
    b = B()
    for p, el, call, ret, ty in adds:
        b.op(p, "element-add", "s", el, call, ret, ty)
    for p, els, call, ret in reads:
        b.op(p, "read-all", "s", None, call, ret, "ok", els)
    return b.events()


def test_set_valid_with_unknown_and_concurrent_adds():
    ev = _set_hist([(1, 1, 0, 1, "ok"), (1, 2, 2, 3, "ok"), (2, 3, 0, 5, "info"),
                    (3, 4, 0, None, "info"), (2, 5, 6, 7, "fail"), (1, 6, 90, 110, "ok")],
                   [(9, [1, 2, 3, "x-not-needed"][:3], 100, 120)])
    res = check_set(ev)
    assert res["valid"] is True, res
    assert (res["recovered"], res["unknown_absent"], res["concurrent_absent"]) == (1, 1, 1)


def test_set_lost_acknowledged_element():
    ev = _set_hist([(1, i, i, i + 0.5, "ok") for i in range(10)], [(9, [0, 1, 2, 4], 20, 21)])
    res = check_set(ev, examples=3)
    assert res["valid"] is False
    assert res["lost_count"] == 6 and res["lost"] == [3, 5, 6]


def test_set_unexpected_and_failed_present():
    ev = _set_hist([(1, 1, 0, 1, "ok"), (1, 2, 2, 3, "fail")], [(9, [1, 2, 77], 20, 21)])
    res = check_set(ev)
    assert res["valid"] is False
    assert res["unexpected"] == [77] and res["failed_present"] == [2]


def test_set_element_seen_then_gone_is_lost():
    # an unknown add became visible to a read, then vanished
    ev = _set_hist([(1, 1, 0, 5, "info")], [(8, [1], 10, 11), (9, [], 20, 21)])
    res = check_set(ev)
    assert res["valid"] is False and res["lost"] == [1]


def test_set_without_final_read_is_unknown():
    assert check_set([])["valid"] == "unknown"
    assert check_set(_set_hist([(1, 1, 0, 1, "ok")], []))["valid"] == "unknown"


# ---- counter -----------------------------------------------------------------------------

def _ctr(ops):
    b = B()
    for p, f, delta, call, ret, ty, result in ops:
        b.op(p, f, "c", delta, call, ret, ty, result)
    return b.events()


def test_counter_valid_within_bounds():
    ev = _ctr([(1, "add", 1, 0, 1, "ok", 1), (2, "add", 2, 0, 5, "info", None),
               (3, "add", 4, 2, 3, "ok", 5), (4, "add", 8, 2, 3, "fail", None),
               (1, "read", None, 4, 4.5, "ok", 5),       # the unknown 2 not yet applied
               (1, "read", None, 10, 11, "ok", 7)])      # now it is
    res = check_counter(ev)
    assert res["valid"] is True, res
    assert res["observations"] == 4
    assert res["finals"]["c"] == {"read": 7, "acked_sum": 5, "unknown_sum": 2}


@pytest.mark.parametrize("final", [4, 8])
def test_counter_final_value_out_of_bounds(final):
    # acked 1+4 = 5, unknown 2: the final read must lie in [5, 7]
    ev = _ctr([(1, "add", 1, 0, 1, "ok", None), (2, "add", 2, 0, 5, "info", None),
               (3, "add", 4, 2, 3, "ok", None), (1, "read", None, 10, 11, "ok", final)])
    res = check_counter(ev)
    assert res["valid"] is False
    assert res["errors"][0]["bounds"] == [5, 7]


def test_counter_read_beyond_bounds_at_its_time():
    # a read before the add was invoked cannot see it
    ev = _ctr([(1, "read", None, 0, 1, "ok", 3), (2, "add", 3, 2, 3, "ok", 3),
               (1, "read", None, 4, 5, "ok", 3)])
    res = check_counter(ev)
    assert res["valid"] is False and res["error_count"] == 1
    assert res["errors"][0]["bounds"] == [0, 0]


def test_counter_add_result_checked_and_negative_deltas():
    ok = _ctr([(1, "add", 5, 0, 1, "ok", 5), (2, "add", -3, 2, 10, "ok", 2),
               (3, "add", 1, 3, 4, "ok", 6), (1, "read", None, 11, 12, "ok", 3)])
    assert check_counter(ok)["valid"] is True
    # ADD returned a value that counts a failed increment
    bad = _ctr([(1, "add", 5, 0, 1, "fail", None), (2, "add", 1, 2, 3, "ok", 6)])
    res = check_counter(bad)
    assert res["valid"] is False and res["errors"][0]["bounds"] == [1, 1]


def test_counter_initial_and_empty():
    assert check_counter([])["valid"] == "unknown"
    ev = _ctr([(1, "read", None, 0, 1, "ok", 10)])
    assert check_counter(ev)["valid"] is False
    assert check_counter(ev, initial={"c": 10})["valid"] is True
    with pytest.raises(history.HistoryError):
        check_counter(_ctr([(1, "add", "x", 0, 1, "ok", None)]))


# ---- single primary ---------------------------------------------------------------------

T0 = "2026-11-23T14:55:"


def line(sec_ms, msg, level="NOTICE"):
    return "%s%sZ %s %s" % (T0, sec_ms, level, msg)


def serving(sec_ms, space, part, epoch):
    return line(sec_ms, "event=partition_serving space=%d partition=%d epoch=%d"
                % (space, part, epoch))


def acquired(sec_ms, d=1):
    return line(sec_ms, "event=lease_acquired daemon=%d coordinator=c1 lease_ms=900" % d)


def lost(sec_ms, d=1):
    return line(sec_ms, "event=lease_lost daemon=%d: no heartbeat answered; serving nothing "
                "until a heartbeat is answered" % d, "ERROR")


def started(sec_ms):
    return line(sec_ms, "event=daemon_started listen=127.0.0.2:1 peer_port=2 data=/x pid=7: "
                "registering")


def test_parse_log_time_and_lines():
    assert checkers.parse_log_time("1970-01-01T00:00:01.250Z") == 1250
    with pytest.raises(ValueError):
        checkers.parse_log_time("yesterday")
    evs = checkers.parse_daemon_log("\n".join([
        serving("18.704", 1, 2, 3), "garbage", line("18.800", "not an event"),
        lost("19.000"), line("19.100", "event=daemon_shutdown daemon=1")]))
    assert [e[1] for e in evs] == ["partition_serving", "lease_lost"]
    assert evs[0][2] == {"space": 1, "partition": 2, "epoch": 3}
    assert evs[1][0] - evs[0][0] == 296
    with pytest.raises(ValueError, match="malformed"):
        checkers.parse_daemon_log(line("18.704", "event=partition_serving space=1"))


def test_single_primary_clean_failover(tmp_path):
    logs = {
        "d1": [started("10.000"), acquired("10.100"), serving("10.200", 1, 2, 3),
               lost("12.000")],
        "d2": [started("10.000"), acquired("10.100"), serving("13.000", 1, 2, 4)],
    }
    res = check_single_primary(logs)
    assert res["valid"] is True, res
    iv = res["intervals"]["1/2"]
    assert [(d, e) for d, e, _, _ in iv] == [("d1", 3), ("d2", 4)]
    assert iv[0][3] == T0 + "12.000Z"
    assert check_single_primary(logs, newer_epoch_ends=False)["valid"] is True
    paths = {}
    for d, lines in logs.items():
        paths[d] = tmp_path / (d + ".log")
        paths[d].write_text("\n".join(lines) + "\n")
    assert check_single_primary(paths)["intervals"] == res["intervals"]


def test_single_primary_two_daemons_same_epoch():
    logs = {
        "d1": [acquired("10.000"), serving("10.200", 1, 2, 3), lost("12.000")],
        "d2": [acquired("10.000"), serving("11.000", 1, 2, 3)],
    }
    res = check_single_primary(logs)
    assert res["valid"] is False
    ov = res["overlaps"]
    assert len(ov) == 1
    assert ov[0]["daemons"] == ["d1", "d2"] and ov[0]["epochs"] == [3, 3]
    assert (ov[0]["start"], ov[0]["end"], ov[0]["ms"]) == (T0 + "11.000Z", T0 + "12.000Z", 1000)
    assert any("both announced epoch 3" in n for n in res["notes"])


def test_single_primary_successor_before_predecessor_lost_its_lease():
    logs = {
        "d1": [acquired("10.000"), serving("10.200", 1, 2, 3), lost("12.000")],
        "d2": [acquired("10.000"), serving("11.500", 1, 2, 4)],
    }
    # the documented approximation: a newer epoch ends the older interval
    assert check_single_primary(logs)["valid"] is True
    res = check_single_primary(logs, newer_epoch_ends=False)
    assert res["valid"] is False and res["overlaps"][0]["ms"] == 500
    assert res["overlaps"][0]["epochs"] == [3, 4]
    # a tolerance hides short overlaps
    assert check_single_primary(logs, newer_epoch_ends=False, tolerance_ms=500)["valid"] is True


def test_single_primary_lease_regained_while_another_serves_same_epoch():
    logs = {
        "d1": [acquired("10.000"), serving("10.200", 1, 2, 3), lost("11.000"),
               acquired("14.000")],
        "d2": [acquired("10.000"), serving("12.000", 1, 2, 3), lost("15.000")],
    }
    res = check_single_primary(logs)
    assert res["valid"] is False
    assert (res["overlaps"][0]["start"], res["overlaps"][0]["ms"]) == (T0 + "14.000Z", 1000)


def test_single_primary_same_millisecond_handover_is_not_an_overlap():
    logs = {"d1": [acquired("10.000"), serving("10.200", 1, 2, 3), lost("12.000")],
            "d2": [acquired("10.000"), serving("12.000", 1, 2, 4)]}
    assert check_single_primary(logs, newer_epoch_ends=False)["valid"] is True


def test_single_primary_killed_run_and_down_periods():
    # d1 killed (no daemon_stopped) after its last line at 11.000, restarted at 20.000
    logs = {
        "d1": [started("10.000"), acquired("10.100"), serving("10.200", 1, 2, 3),
               started("20.000"), acquired("20.100")],
        "d2": [acquired("10.000"), serving("15.000", 1, 2, 4)],
    }
    res = check_single_primary(logs, newer_epoch_ends=False)
    assert res["valid"] is True, res
    assert any("without daemon_stopped" in n for n in res["notes"])
    # d1 paused from 10.500 to 16.000; it logs lease_lost only on resuming
    logs = {"d1": [acquired("10.000"), serving("10.200", 1, 2, 3), lost("16.000")],
            "d2": [acquired("10.000"), serving("15.000", 1, 2, 4)]}
    assert check_single_primary(logs, newer_epoch_ends=False)["valid"] is False
    base = checkers.parse_log_time(T0 + "00.000Z") / 1000
    down = {"d1": [(base + 10.5, base + 16.0)]}
    assert check_single_primary(logs, down=down, newer_epoch_ends=False)["valid"] is True


def test_single_primary_stop_handoff_and_stale_epoch_note():
    logs = {
        "d1": [acquired("10.000"), serving("10.200", 1, 2, 3), serving("10.300", 1, 3, 3),
               line("11.000", "event=handoff_done daemon=1: leads no partition"),
               line("11.001", "event=daemon_stopped daemon=1 status=0")],
        "d2": [acquired("10.000"), serving("11.000", 1, 2, 4), serving("11.000", 1, 3, 4),
               serving("12.000", 1, 2, 2)],
    }
    res = check_single_primary(logs, newer_epoch_ends=False)
    assert res["valid"] is True, res
    assert any("announced epoch 2 of 1/2" in n for n in res["notes"])
    assert check_single_primary({})["valid"] is True
