"""checkers: verdicts on chaos histories (see history.py for the format).

Every checker returns a dict with "valid": True, False or "unknown" (the
checker could not decide within its effort bound, or the history holds too
little to decide), plus details that say why.

- check_linearizable(history): per-key linearizability of registers with
  read, write, compare-and-set and delete (keel's GET, PUT, CPUT, DEL).
- check_set(history): lost / unexpected elements of a set workload.
- check_counter(history): ADD results and reads against the bounds the
  acknowledged and unknown increments allow.
- check_single_primary(logs): at most one daemon serving a partition at any
  instant, from the daemons' event logs.

Design note (linearizability):

 1. P-compositionality: a register history is linearizable iff each key's
    sub-history is, so keys are checked one at a time (as Porcupine does).
 2. Search: Lowe's just-in-time version of Wing & Gong. Call and return
    entries are sorted by time (a call before a return at the same instant:
    equal timestamps count as concurrent) in a doubly linked list. Walking
    from the head, a call entry may be linearized (lifted out with its
    return) if the model allows it; reaching a return entry means that
    operation had to take effect already, so the search backtracks. Every
    (set of linearized operations as a bitmask, register state) reached is
    memoized and never explored twice.
 3. Outcomes. ok: must take effect between its call and its return. fail:
    certainly did not take effect, dropped; except a cas that failed with
    CMPFAIL (the object exists and differs from the expected value) or
    NOTFOUND (the object does not exist), which is kept as an observation of
    the state at some instant between its call and its return. info (unknown,
    timed out, or never completed): a write, cas or delete may take effect at
    any instant after its call, or never; its return is at +infinity. An
    unknown read tells nothing and is dropped. "Never" is the same as "not
    linearized by the end", so the search is done when every operation that
    is not unknown has been linearized.
 4. Values no operation compares the state with (not read, not a cas's
    expected value, not a CMPFAIL's) behave alike in every step, so they
    become one value, OTHER (the explanation still shows the real value).
    An unknown write/cas whose new value is OTHER, with no CMPFAIL
    observation returning after its call, is dropped: taking effect could
    only make later observations harder, so "never" is always at least as
    good (sound; reported as "dropped").
 4b. Symmetry: identical unknown operations (same kind and values, both
    open) are interchangeable, so the search only tries the earliest called
    one not yet linearized.
 5. Effort bound: the search counts its steps; past max_steps the key's
    verdict is "unknown", never a hang and never a false verdict.
 6. Windows: for a key that fails, the report gives a minimal time window
    [a, b] that alone cannot be linearized from ANY initial state. The window
    keeps every operation whose interval meets [a, b]; an operation returning
    after b counts as unknown (reads dropped), one called before a may have
    taken effect before the window (a no-op inside it, or take effect before
    its return; its read is dropped). Each of these only relaxes the history,
    so a window that fails proves the whole history fails. b is the earliest
    return, then a the latest call, for which the window still fails (both
    monotone, found by bisection).

Single primary (an approximation; see check_single_primary).
"""

import bisect
import calendar
import json
import os
import re
import sys
import time

try:
    from . import history as _history
except ImportError:  # run as a script or imported with tests/chaos on sys.path
    import history as _history

INF = float("inf")
DEFAULT_MAX_STEPS = 200_000


def _ops(history):
    """Accepts events (dicts) or already paired Op objects."""
    h = list(history)
    if h and isinstance(h[0], dict):
        return _history.pair(h)
    return h


def _hashable(v):
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


# ---- register model ---------------------------------------------------------------

class _Any:
    """The unknown initial state of a window: fixed by the first observation."""

    def __repr__(self):
        return "<any>"


ANY = _Any()


class _Other:
    """Every written value that no read, cas or CMPFAIL compares with."""

    def __repr__(self):
        return "<a value no read or cas looks for>"


OTHER = _Other()

# engine op kinds
R, W, C, M, N = "read", "write", "cas", "cas-mismatch", "notfound"


class _EOp:
    """An operation as the search sees it."""

    __slots__ = ("kind", "a", "b", "call", "ret", "optional", "op")

    def __init__(self, kind, a, b, call, ret, optional, op):
        self.kind, self.a, self.b = kind, a, b
        self.call, self.ret, self.optional, self.op = call, ret, optional, op


def _step(state, e):
    """Next states if e takes effect in `state` ([] = impossible)."""
    k = e.kind
    if k == R:
        out = [e.a] if (state is ANY or state == e.a) else []
    elif k == W:
        out = [e.a]
    elif k == C:
        out = [e.b] if (state is ANY or state == e.a) else []
    elif k == M:
        out = [state] if (state is ANY or (state is not None and state != e.a)) else []
    else:  # N
        out = [None] if (state is ANY or state is None) else []
    if e.optional and e.ret != INF and state not in out:
        out.append(state)  # took effect before the window: a no-op inside it
    return out


def _why_not(state, e, shown=None):
    """Why e cannot take effect in `state` (displayed as `shown`), as text."""
    s = shown or ("nothing (not found)" if state is None else repr(state))
    if e.kind == R:
        want = "not found" if e.a is None else repr(e.a)
        return "it read %s while the register holds %s" % (want, s)
    if e.kind == C:
        return "it expected %r while the register holds %s" % (e.a, s)
    if e.kind == M:
        return "it failed with CMPFAIL (value differs from %r) while the register holds %s" % (
            e.a, s)
    if e.kind == N:
        return "it failed with NOTFOUND while the register holds %s" % s
    return ("every order that places it there was already explored and leads to a dead "
            "end later")


def _register_ops(ops):
    """Key ops -> (engine ops, dropped count) per design notes 3 and 4."""
    eops = []
    for op in ops:
        f, t = op.f, op.type
        if f == "read":
            if t == "ok":
                eops.append(_EOp(R, _hashable(op.result), None, op.call, op.ret, False, op))
        elif f in ("write", "delete"):
            v = None if f == "delete" else _hashable(op.arg)
            if t == "ok":
                eops.append(_EOp(W, v, None, op.call, op.ret, False, op))
            elif t == "info":
                eops.append(_EOp(W, v, None, op.call, INF, True, op))
        elif f == "cas":
            arg = op.arg
            if not isinstance(arg, (list, tuple)) or len(arg) != 2:
                raise _history.HistoryError("operation #%d: cas value must be [from, to]: %r"
                                            % (op.index, arg))
            fr, to = _hashable(arg[0]), _hashable(arg[1])
            if t == "ok":
                eops.append(_EOp(C, fr, to, op.call, op.ret, False, op))
            elif t == "info":
                eops.append(_EOp(C, fr, to, op.call, INF, True, op))
            elif op.error == "CMPFAIL":
                eops.append(_EOp(M, fr, None, op.call, op.ret, False, op))
            elif op.error == "NOTFOUND":
                eops.append(_EOp(N, None, None, op.call, op.ret, False, op))
    # values some operation compares the state with; any other value
    # behaves the same in every step, so it becomes OTHER (design note 4)
    observed = {None}
    m_last = -INF
    for e in eops:
        if e.kind in (R, C, M):
            observed.add(e.a)
        if e.kind == M:
            m_last = max(m_last, e.ret)
    kept = []
    for e in eops:
        if e.kind == W and e.a not in observed:
            e.a = OTHER
        elif e.kind == C and e.b not in observed:
            e.b = OTHER
        new = e.b if e.kind == C else e.a
        if e.optional and new is OTHER and m_last <= e.call:
            continue  # "never" is at least as good as taking effect
        kept.append(e)
    return kept, len(eops) - len(kept)


def _search(eops, init, max_steps):
    """Lowe/Wing-Gong search -> (verdict, steps, best) with verdict "ok",
    "fail" or "unknown"; best = (linearized [(EOp, state after)], stuck EOp,
    state) of the deepest dead end, for explanations."""
    n = len(eops)
    entries = []
    for i, e in enumerate(eops):
        entries.append((e.call, 0, i))
        entries.append((e.ret, 1, i))
    entries.sort()
    ne = len(entries)
    head = ne
    nxt = [p + 1 for p in range(ne)] + [0 if ne else -1]
    if ne:
        nxt[ne - 1] = -1
    prv = [p - 1 for p in range(ne)] + [-1]
    if ne:
        prv[0] = head
    is_call = [k == 0 for _, k, _ in entries]
    op_of = [i for _, _, i in entries]
    ret_pos = [0] * n
    for pos, (_, k, i) in enumerate(entries):
        if k == 1:
            ret_pos[i] = pos
    # symmetry (design note 4b): identical unknown ops still open are interchangeable,
    # so only the earliest called one not yet linearized is tried
    twins = [()] * n
    groups = {}
    for i in sorted(range(n), key=lambda i: (eops[i].call, i)):
        if eops[i].optional and eops[i].ret == INF:
            g = groups.setdefault((eops[i].kind, eops[i].a, eops[i].b), [])
            twins[i] = tuple(g)
            g.append(i)
    required_left = sum(1 for e in eops if not e.optional)
    mask, state = 0, init
    cache = set()
    stack = []
    best = None
    steps = 0
    e = nxt[head]
    start = 0

    def unlink(p):
        nxt[prv[p]] = nxt[p]
        if nxt[p] != -1:
            prv[nxt[p]] = prv[p]

    def relink(p):
        nxt[prv[p]] = p
        if nxt[p] != -1:
            prv[nxt[p]] = p

    while True:
        if required_left == 0:
            return "ok", steps, None
        steps += 1
        if steps > max_steps:
            return "unknown", steps, None
        assert e != -1, "a required operation's return entry must stop the walk"
        i = op_of[e]
        if is_call[e]:
            if twins[i] and any(not (mask >> t) & 1 for t in twins[i]):
                e = nxt[e]  # an identical open op called earlier goes first
                start = 0
                continue
            choices = _step(state, eops[i])
            bit = 1 << i
            moved = False
            for c in range(start, len(choices)):
                ns = choices[c]
                key = (mask | bit, ns)
                if key in cache:
                    continue
                cache.add(key)
                stack.append((e, state, c))
                mask |= bit
                state = ns
                unlink(e)
                unlink(ret_pos[i])
                if not eops[i].optional:
                    required_left -= 1
                e = nxt[head]
                start = 0
                moved = True
                break
            if not moved:
                e = nxt[e]
                start = 0
            continue
        # a return entry: operation i had to take effect already
        if best is None or len(stack) > len(best[0]):
            # stack holds the state BEFORE each lifted op; after = the next one's before
            after = [s for _, s, _ in stack[1:]] + [state]
            best = ([(eops[op_of[p]], s) for (p, _, _), s in zip(stack, after)], eops[i], state)
        if not stack:
            return "fail", steps, best
        p, s, c = stack.pop()
        j = op_of[p]
        relink(ret_pos[j])
        relink(p)
        mask &= ~(1 << j)
        state = s
        if not eops[j].optional:
            required_left += 1
        e = p
        start = c + 1


def _window(eops, a, b):
    """The relaxed sub-history for window [a, b] (design note 6)."""
    out = []
    for e in eops:
        if e.call > b or e.ret < a:
            continue
        late = e.ret > b
        early = e.call < a
        if not late and not early:
            out.append(e)
            continue
        if e.kind in (R, M, N):
            continue  # its observation may lie outside the window
        ret = INF if (late or e.ret == INF) else e.ret
        out.append(_EOp(e.kind, e.a, e.b, e.call, ret, True, e.op))
    return out


def _minimal_window(eops, max_steps):
    """-> (a, b, window eops, best) for a failing key, or None if no
    window decides within the budget."""
    rets = sorted({e.ret for e in eops if not e.optional})

    def fails(a, b):
        init = None if a == -INF else ANY
        v, _, best = _search(_window(eops, a, b), init, max_steps)
        return best if v == "fail" else None

    lo, hi = 0, len(rets) - 1  # smallest index whose window (-inf, rets[i]] fails
    if fails(-INF, rets[hi]) is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if fails(-INF, rets[mid]) is not None:
            hi = mid
        else:
            lo = mid + 1
    b = rets[lo]
    calls = [-INF] + sorted({e.call for e in eops if e.call <= b})
    lo, hi = 0, len(calls) - 1  # largest index whose window [calls[i], b] fails
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fails(calls[mid], b) is not None:
            lo = mid
        else:
            hi = mid - 1
    a = calls[lo]
    w = _window(eops, a, b)
    best = fails(a, b)
    return a, b, w, best


def _fmt_state(s):
    if s is ANY:
        return "unknown (whatever the operations before the window left)"
    return "not found" if s is None else repr(s)


def _explain(key, a, b, w, best):
    lines = []
    start = "from the beginning" if a == -INF else "from %.3f ms" % (a / 1e6)
    lines.append("key %r: these %d operations (%s to %.3f ms) cannot be linearized as a "
                 "register from any initial state:" % (key, len(w), start, b / 1e6)
                 if a != -INF else
                 "key %r: these %d operations (%s to %.3f ms) cannot be linearized as a "
                 "register starting from 'not found':" % (key, len(w), start, b / 1e6))
    for e in sorted(w, key=lambda e: (e.call, e.op.index)):
        note = ""
        if e.optional and e.op.type != "info":
            note = "   (treated as unknown: it overlaps the window's edge)"
        lines.append("  " + e.op.describe() + note)
    if best:
        lin, stuck, state = best
        shown = None
        if lin:
            lines.append("The longest consistent order found:")
            for e, s in lin:
                if s is OTHER:  # show the value itself, not its class
                    if e.kind in (W, C) and e.op.f in ("write", "cas"):
                        shown = repr(_hashable(e.op.arg if e.kind == W else e.op.arg[1]))
                else:
                    shown = _fmt_state(s)
                lines.append("  %s  => register %s" % (e.op.describe(), shown))
        else:
            lines.append("No operation can go first consistently.")
        lines.append("Then %s must take effect before it returned, but %s. "
                     "Every other order fails too (searched exhaustively)."
                     % (stuck.op.describe(), _why_not(state, stuck, shown)))
    return "\n".join(lines)


def check_linearizable(history, max_steps=DEFAULT_MAX_STEPS, explain=True):
    """Per-key register linearizability (design note above).

    max_steps bounds the search per key (and per window probe when
    explaining a failure). Returns {"valid", "keys", "failures": [{"key",
    "window": [Op], "explanation"}], "unknown_keys", "steps", "dropped"}."""
    by_key = {}
    for op in _ops(history):
        if op.f in ("read", "write", "cas", "delete"):
            by_key.setdefault(_hashable(op.key), []).append(op)
    failures, unknown = [], []
    total_steps = dropped = 0
    for key in sorted(by_key, key=repr):
        eops, d = _register_ops(by_key[key])
        dropped += d
        if not eops:
            continue
        verdict, steps, best = _search(eops, None, max_steps)
        total_steps += steps
        if verdict == "unknown":
            unknown.append(key)
        elif verdict == "fail":
            fail = {"key": key, "window": [e.op for e in eops], "explanation": None}
            mw = _minimal_window(eops, max_steps) if explain else None
            if mw:
                a, b, w, wbest = mw
                fail["window"] = sorted((e.op for e in w), key=lambda o: o.index)
                fail["explanation"] = _explain(key, a, b, w, wbest)
            else:
                lin, stuck, state = best
                fail["explanation"] = ("key %r: not linearizable; %s must take effect before "
                                       "it returned, but %s" % (key, stuck.op.describe(),
                                                               _why_not(state, stuck)))
            failures.append(fail)
    valid = False if failures else ("unknown" if unknown else True)
    return {"valid": valid, "keys": len(by_key), "failures": failures,
            "unknown_keys": unknown, "steps": total_steps, "dropped": dropped}


# ---- set ------------------------------------------------------------------------------

def check_set(history, add_f="element-add", read_f="read-all", examples=10):
    """Set workload: unique elements added, read all at the end.

    The final read is the ok read-all invoked last. lost: acknowledged adds
    that completed before it was invoked, and elements an earlier completed
    read saw, that it lacks. unexpected: present but never attempted.
    failed_present: present though its add certainly failed. Unknown adds may
    be present or absent (counted as recovered / not). valid is "unknown"
    without an ok read-all."""
    ops = _ops(history)
    attempted, acked_at, failed = set(), {}, set()
    unknown = set()
    reads = []
    for op in ops:
        if op.f == add_f:
            el = _hashable(op.arg)
            attempted.add(el)
            if op.type == "ok":
                acked_at[el] = op.ret
            elif op.type == "fail":
                failed.add(el)
            else:
                unknown.add(el)
        elif op.f == read_f and op.type == "ok":
            reads.append(op)
    res = {"attempted": len(attempted), "acknowledged": len(acked_at), "unknown": len(unknown),
           "failed": len(failed)}
    if not reads:
        res.update(valid="unknown", reason="no successful %s" % read_f)
        return res
    final = max(reads, key=lambda o: (o.call, o.index))
    present = set(_hashable(x) for x in (final.result or ()))
    must = {el for el, t in acked_at.items() if t < final.call}
    for r in reads:
        if r is not final and r.ret < final.call:
            must |= set(_hashable(x) for x in (r.result or ()))
    lost = sorted(must - present, key=repr)
    unexpected = sorted(present - attempted, key=repr)
    failed_present = sorted((present & failed) - set(acked_at) - unknown, key=repr)
    res.update(
        valid=not (lost or unexpected or failed_present),
        final_read=final.describe() if len(present) <= 20 else "#%d read-all (%d elements)"
        % (final.index, len(present)),
        present=len(present),
        lost_count=len(lost), lost=lost[:examples],
        unexpected_count=len(unexpected), unexpected=unexpected[:examples],
        failed_present_count=len(failed_present), failed_present=failed_present[:examples],
        recovered=len(unknown & present), unknown_absent=len(unknown - present),
        concurrent_absent=len({el for el, t in acked_at.items() if t >= final.call} - present))
    return res


# ---- counter ----------------------------------------------------------------------------

def check_counter(history, initial=0, examples=10):
    """Counter workload (ADD): per key, every observation — an ok read, or the
    new value an ok add returned — must lie within the bounds possible at
    its time: initial + (deltas of ok adds that returned before it was
    called) + any subset of (deltas of ok or unknown adds called before it
    returned); an ok add counts its own delta for certain. Failed adds never
    count. With positive deltas, a final read after everything is within
    [sum of acked, sum of acked + sum of unknown]. `initial` is a number or a
    {key: number} dict."""
    by_key = {}
    for op in _ops(history):
        if op.f in ("add", "read"):
            by_key.setdefault(_hashable(op.key), []).append(op)
    errors, checked = [], 0
    finals = {}
    for key, ops in sorted(by_key.items(), key=lambda kv: repr(kv[0])):
        init = initial.get(key, 0) if isinstance(initial, dict) else initial
        adds = [o for o in ops if o.f == "add" and o.type != "fail"]
        for o in adds:
            if not isinstance(o.arg, int) or isinstance(o.arg, bool):
                raise _history.HistoryError("operation #%d: add delta must be an integer: %r"
                                            % (o.index, o.arg))
        acked = sorted((o.ret, o.arg) for o in adds if o.type == "ok")
        acked_t = [t for t, _ in acked]
        acked_sum, acked_pos, acked_neg = [0], [0], [0]
        for _, d in acked:
            acked_sum.append(acked_sum[-1] + d)
            acked_pos.append(acked_pos[-1] + max(d, 0))
            acked_neg.append(acked_neg[-1] + min(d, 0))
        called = sorted((o.call, o.arg) for o in adds)
        called_t = [t for t, _ in called]
        called_pos, called_neg = [0], [0]
        for _, d in called:
            called_pos.append(called_pos[-1] + max(d, 0))
            called_neg.append(called_neg[-1] + min(d, 0))
        obs = [o for o in ops if o.type == "ok" and o.result is not None]
        for o in obs:
            v = o.result
            if not isinstance(v, int) or isinstance(v, bool):
                raise _history.HistoryError("operation #%d: counter value must be an integer: %r"
                                            % (o.index, v))
            checked += 1
            nd = bisect.bisect_left(acked_t, o.call)       # definite: returned before call
            nc = bisect.bisect_right(called_t, o.ret)      # possible: called by its return
            definite = acked_sum[nd]
            pos = called_pos[nc] - acked_pos[nd]
            neg = called_neg[nc] - acked_neg[nd]
            if o.f == "add":  # its own delta is certain, not merely possible
                definite += o.arg
                pos -= max(o.arg, 0)
                neg -= min(o.arg, 0)
            lo, hi = init + definite + neg, init + definite + pos
            if not lo <= v <= hi:
                errors.append({"key": key, "op": o.describe(), "value": v, "bounds": [lo, hi]})
        reads = [o for o in ops if o.f == "read" and o.type == "ok"]
        if reads:
            last = max(reads, key=lambda o: (o.call, o.index))
            finals[key] = {"read": last.result,
                           "acked_sum": sum(d for _, d in acked),
                           "unknown_sum": sum(o.arg for o in adds if o.type == "info")}
    res = {"keys": len(by_key), "observations": checked, "error_count": len(errors),
           "errors": errors[:examples], "finals": finals}
    res["valid"] = False if errors else (True if checked else "unknown")
    return res


# ---- single primary ---------------------------------------------------------------------

_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z (\w+) (.*)$")
_FIELD = re.compile(r"(\w+)=([^\s:;,]+)")
_EVENTS = ("partition_serving", "lease_acquired", "lease_lost", "daemon_started",
           "daemon_stopped", "handoff_done")


def parse_log_time(stamp):
    """'2026-11-23T14:55:18.704Z' -> milliseconds since the Unix epoch."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z$", stamp)
    if not m:
        raise ValueError("not a log timestamp: %r" % stamp)
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) * 1000 + \
        int(m.group(2))


def format_ms(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def parse_daemon_log(text):
    """Event lines of one daemon's log(s), in file order ->
    [(ms, event, {field: value})]; other lines are skipped."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    out = []
    for line in lines:
        m = _LINE.match(line.rstrip("\n"))
        if not m:
            continue
        msg = m.group(4)
        if not msg.startswith("event="):
            continue
        name = msg[6:].split(None, 1)[0].rstrip(":;,")
        if name not in _EVENTS:
            continue
        fields = dict(_FIELD.findall(msg))
        ms = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) * 1000 + \
            int(m.group(2))
        if name == "partition_serving":
            try:
                fields = {"space": int(fields["space"]), "partition": int(fields["partition"]),
                          "epoch": int(fields["epoch"])}
            except (KeyError, ValueError):
                raise ValueError("malformed partition_serving line: %r" % line) from None
        out.append((ms, name, fields))
    return out


def check_single_primary(logs, down=None, newer_epoch_ends=True, tolerance_ms=0):
    """At most one daemon serves a (space, partition) at any instant.

    logs: {daemon name: log text, list of lines, or a pathlib.Path} (all of
    one daemon's log files concatenated in the order they were written). down: {daemon name:
    [(start, end)]} wall-clock seconds (time.time()) during which the harness
    knows the process was dead or paused (end None = until the end).

    The model (an approximation; keel logs no event when a map demotes a
    primary, so the logs cannot say exactly when one stops):
    - A daemon serves (space, partition) while all of these hold: it logged
      partition_serving for it (the latest such line gives the epoch); its
      process is alive (from daemon_started, or its first line, to
      daemon_stopped; a run ended by kill -9 is taken to end at its last
      line before the next daemon_started, unless `down` says more); it
      holds its lease (lease_acquired .. lease_lost; no lease before the
      first lease_acquired of a run); it has not logged handoff_done; it is
      not in a `down` period; and, when newer_epoch_ends (the default), no
      daemon has announced a newer epoch for that partition.
    - With newer_epoch_ends, a stale primary that keeps serving after its
      successor started is NOT caught (its interval is cut by the
      successor's announcement); what is caught: two daemons serving the
      same epoch at once, a daemon whose lease comes back while it still
      serves the newest epoch and another daemon serves it too. With
      newer_epoch_ends=False the interval runs until lease_lost / stop /
      handoff_done, which catches a successor that starts before its
      predecessor's lease_lost, but raises false alarms when a map demotes a
      primary that keeps its lease (handoff of some partitions, rebalancing)
      or when a paused primary logs lease_lost only after it resumes (pass
      `down` for pauses).
    - Timestamps have millisecond resolution and come from each process's
      CLOCK_REALTIME (one machine, one clock); events in the same millisecond
      count as simultaneous, and an overlap must last more than
      tolerance_ms to be reported.

    Returns {"valid", "overlaps": [{"space", "partition", "daemons",
    "epochs", "start", "end", "ms"}], "intervals": {"space/partition":
    [(daemon, epoch, start, end)]}, "notes": [...]}."""
    down = down or {}
    evs = []  # (ms, seq, daemon, event, fields)
    seq = 0
    notes = []
    for d, text in logs.items():
        if isinstance(text, os.PathLike):
            with open(text, encoding="utf-8", errors="replace") as f:
                text = f.read()
        parsed = parse_daemon_log(text)
        # runs split at daemon_started; a run with no daemon_stopped that is
        # followed by another run ends at its last line
        runs, cur = [], []
        for ev in parsed:
            if ev[1] == "daemon_started" and cur:
                runs.append(cur)
                cur = []
            cur.append(ev)
        if cur:
            runs.append(cur)
        for ri, run in enumerate(runs):
            for ms, name, fields in run:
                evs.append((ms, seq, d, name, fields))
                seq += 1
            if ri < len(runs) - 1 and run[-1][1] != "daemon_stopped":
                evs.append((run[-1][0], seq, d, "run_end", {}))
                seq += 1
                notes.append("%s: a run ends without daemon_stopped at %s (killed?); taken "
                             "to end at its last line" % (d, format_ms(run[-1][0])))
        for start, end in down.get(d, ()):
            evs.append((int(round(start * 1000)), seq, d, "down", {}))
            seq += 1
            if end is not None:
                evs.append((int(round(end * 1000)), seq, d, "up", {}))
                seq += 1
    evs.sort(key=lambda e: (e[0], e[1]))
    daemons = sorted(logs)
    alive = {d: True for d in daemons}
    lease = {d: False for d in daemons}
    downs = {d: 0 for d in daemons}
    serving = {d: {} for d in daemons}
    max_epoch = {}
    announced = {}  # (sp, epoch) -> daemon that announced it first
    active = {}  # (d, sp) -> (start, epoch)
    intervals = {}
    pair_open = {}  # (sp, d1, d2) -> (start, e1, e2)
    overlaps = []

    def is_active(d, sp):
        if not (alive[d] and lease[d] and downs[d] == 0 and sp in serving[d]):
            return False
        return (not newer_epoch_ends) or serving[d][sp] >= max_epoch[sp]

    def close_pair(k, end):
        start, e1, e2 = pair_open.pop(k)
        if end - start > tolerance_ms:
            sp, d1, d2 = k
            overlaps.append({"space": sp[0], "partition": sp[1], "daemons": [d1, d2],
                             "epochs": [e1, e2], "start": format_ms(start),
                             "end": format_ms(end), "ms": end - start})

    i = 0
    last_ms = evs[-1][0] if evs else 0
    while i < len(evs):
        ms = evs[i][0]
        while i < len(evs) and evs[i][0] == ms:
            _, _, d, name, fl = evs[i]
            i += 1
            if name == "daemon_started":
                alive[d], lease[d], serving[d] = True, False, {}
            elif name in ("daemon_stopped", "run_end"):
                alive[d], lease[d], serving[d] = False, False, {}
            elif name == "lease_acquired":
                lease[d] = True
            elif name == "lease_lost":
                lease[d] = False
            elif name == "handoff_done":
                serving[d] = {}
            elif name == "down":
                downs[d] += 1
            elif name == "up":
                downs[d] = max(0, downs[d] - 1)
            elif name == "partition_serving":
                sp = (fl["space"], fl["partition"])
                ep = fl["epoch"]
                if ep < max_epoch.get(sp, ep):
                    notes.append("%s announced epoch %d of %d/%d at %s after epoch %d had been "
                                 "announced" % (d, ep, sp[0], sp[1], format_ms(ms),
                                                max_epoch[sp]))
                first = announced.setdefault((sp, ep), d)
                if first != d:
                    notes.append("%s and %s both announced epoch %d of %d/%d"
                                 % (first, d, ep, sp[0], sp[1]))
                serving[d][sp] = ep
                max_epoch[sp] = max(max_epoch.get(sp, ep), ep)
        # the state holds from ms until the next batch
        now = {}
        for d in daemons:
            for sp in serving[d]:
                if is_active(d, sp):
                    now[(d, sp)] = serving[d][sp]
        for k in list(active):
            if now.get(k) != active[k][1]:
                start, ep = active.pop(k)
                intervals.setdefault("%d/%d" % k[1], []).append(
                    (k[0], ep, format_ms(start), format_ms(ms)))
        for k, ep in now.items():
            if k not in active:
                active[k] = (ms, ep)
        by_sp = {}
        for (d, sp), ep in now.items():
            by_sp.setdefault(sp, []).append((d, ep))
        cur_pairs = set()
        for sp, ds in by_sp.items():
            ds.sort()
            for x in range(len(ds)):
                for y in range(x + 1, len(ds)):
                    k = (sp, ds[x][0], ds[y][0])
                    cur_pairs.add(k)
                    if k not in pair_open:
                        pair_open[k] = (ms, ds[x][1], ds[y][1])
        for k in list(pair_open):
            if k not in cur_pairs:
                close_pair(k, ms)
    for k in list(active):
        start, ep = active.pop(k)
        intervals.setdefault("%d/%d" % k[1], []).append(
            (k[0], ep, format_ms(start), format_ms(last_ms)))
    for k in list(pair_open):
        close_pair(k, last_ms)
    return {"valid": not overlaps, "overlaps": overlaps, "intervals": intervals,
            "notes": notes}


# ---- command line -----------------------------------------------------------------------

def main(argv):
    """checkers.py linearizable|set|counter HISTORY.jsonl
       checkers.py primary DAEMON_LOG...   (daemon name = file name)"""
    if len(argv) < 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    what, paths = argv[1], argv[2:]
    if what == "primary":
        logs = {}
        for p in paths:
            with open(p, encoding="utf-8", errors="replace") as f:
                logs[p] = f.read()
        res = check_single_primary(logs)
    else:
        fn = {"linearizable": check_linearizable, "set": check_set,
              "counter": check_counter}.get(what)
        if fn is None:
            print(main.__doc__, file=sys.stderr)
            return 2
        res = fn(_history.load(paths[0]))
        if what == "linearizable":
            for f in res["failures"]:
                print(f["explanation"])
            res = dict(res, failures=len(res["failures"]))
    print(json.dumps(res, indent=1, default=repr, sort_keys=True))
    return 0 if res["valid"] is True else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
