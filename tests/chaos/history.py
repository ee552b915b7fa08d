"""history: the operation history shared by chaos workloads and checkers.

A history is a list of events (dicts), in the order they were recorded:

    {"process": 3, "type": "invoke", "f": "write", "key": "k1", "value": 7,
     "time": 123456789}
    {"process": 3, "type": "ok",     "f": "write", "key": "k1", "value": 7,
     "time": 123999000}

- process: who issued the operation (int or str). A process has at most one
  operation outstanding: its next invoke comes after the completion of the
  previous one.
- type: "invoke", then exactly one completion: "ok" (it happened), "fail" (it
  certainly did not happen) or "info" (unknown: timed out, connection lost,
  the reply said the outcome is unknown). An invoke with no completion by the
  end of the history counts as info.
- f: read | write | cas | delete (registers), add | read (counters),
  element-add | read-all (sets); checkers ignore functions they do not know.
- key: the object (registers and counters are checked per key).
- value: at invoke, the argument (written value, [from, to] for cas, delta
  for add, element for element-add, None for reads); at completion, the
  result, or None when there is none: the value read (None = not found),
  the new value ADD returned, the list of elements read-all returned. The
  argument is never repeated in the completion (pair() keeps both).
- time: nanoseconds from ONE monotonic clock (time.monotonic_ns() in the
  recording process); only differences and order matter.
- error (optional, completions): the error code of a fail ("CMPFAIL",
  "NOTFOUND", ...). A cas that failed with CMPFAIL or NOTFOUND is an
  observation the linearizability checker uses (see checkers.py).

Invariants: times are non-decreasing in recording order (Recorder takes the
time and appends under one lock); pair() refuses histories where a process
has two operations outstanding or a completion has no invoke.
"""

import json
import threading
import time

TYPES = ("invoke", "ok", "fail", "info")


class HistoryError(ValueError):
    """The history is malformed (say which event and why)."""


class Recorder:
    """Thread-safe history recording: every event is stamped with
    time.monotonic_ns() and appended under one lock, so the list order is
    the time order.

        rec = Recorder()
        h = rec.invoke(p, "write", "k", 5)
        ... do the request ...
        rec.ok(h)  /  rec.fail(h, error="CMPFAIL")  /  rec.info(h)
        rec.ok(h, value=read_value)
    """

    def __init__(self, clock=time.monotonic_ns):
        self._lock = threading.Lock()
        self._clock = clock
        self.events = []

    def _append(self, ev):
        with self._lock:
            ev["time"] = self._clock()
            self.events.append(ev)
        return ev

    def invoke(self, process, f, key=None, value=None):
        """Records an invocation; returns a handle for the completion."""
        return self._append({"process": process, "type": "invoke", "f": f, "key": key,
                             "value": value})

    def complete(self, handle, type_, value=None, error=None):
        if type_ not in ("ok", "fail", "info"):
            raise HistoryError("completion type must be ok, fail or info, not %r" % (type_,))
        ev = {"process": handle["process"], "type": type_, "f": handle["f"],
              "key": handle["key"], "value": value}
        if error is not None:
            ev["error"] = error
        return self._append(ev)

    def ok(self, handle, value=None):
        return self.complete(handle, "ok", value)

    def fail(self, handle, error=None, value=None):
        return self.complete(handle, "fail", value, error)

    def info(self, handle, error=None):
        return self.complete(handle, "info", None, error)

    def snapshot(self):
        """A copy of the events recorded so far."""
        with self._lock:
            return [dict(e) for e in self.events]


def save(events, path):
    """Writes one JSON object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e, sort_keys=True))
            f.write("\n")


def load(path):
    """Reads a JSON-lines history; blank lines are skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except ValueError as ex:
                raise HistoryError("%s:%d: not JSON: %s" % (path, n, ex)) from None
            if not isinstance(e, dict):
                raise HistoryError("%s:%d: not an object" % (path, n))
            out.append(e)
    return out


class Op:
    """One operation: an invoke paired with its completion.

    type is "ok", "fail" or "info" (info also when the invoke never
    completed); ret is the completion time, None when the outcome is
    unknown (info: the operation stays open until the end of the history).
    arg is the invoke's value, result the completion's value."""

    __slots__ = ("index", "process", "f", "key", "arg", "result", "type", "error", "call", "ret")

    def __init__(self, index, process, f, key, arg, result, type_, error, call, ret):
        self.index = index
        self.process = process
        self.f = f
        self.key = key
        self.arg = arg
        self.result = result
        self.type = type_
        self.error = error
        self.call = call
        self.ret = ret

    def describe(self):
        """A short readable form: 'p3 write(k1, 7) ok [1.000..2.000 ms]'."""
        if self.f in ("read", "read-all"):
            what = "%s(%r) -> %r" % (self.f, self.key, self.result) if self.type == "ok" \
                else "%s(%r)" % (self.f, self.key)
        elif self.f == "add" and self.type == "ok" and self.result is not None \
                and self.result != self.arg:
            what = "add(%r, %r) -> %r" % (self.key, self.arg, self.result)
        else:
            what = "%s(%r, %r)" % (self.f, self.key, self.arg)
        st = self.type + ((" " + self.error) if self.error else "")
        end = "open" if self.ret is None else "%.3f" % (self.ret / 1e6)
        return "#%d p%s %s %s [%.3f..%s ms]" % (self.index, self.process, what, st,
                                                self.call / 1e6, end)

    def __repr__(self):
        return "Op(%s)" % self.describe()


def pair(events):
    """Pairs each invoke with its process's next completion -> list of Op,
    in invoke order. Raises HistoryError on a malformed history."""
    open_by_proc = {}
    ops = []
    last_time = None
    for i, e in enumerate(events):
        for field in ("process", "type", "f", "time"):
            if field not in e:
                raise HistoryError("event %d has no %r: %r" % (i, field, e))
        t = e["time"]
        if not isinstance(t, int):
            raise HistoryError("event %d: time must be integer nanoseconds: %r" % (i, e))
        if last_time is not None and t < last_time:
            raise HistoryError("event %d: time goes backwards (%d < %d)" % (i, t, last_time))
        last_time = t
        p, ty = e["process"], e["type"]
        if ty not in TYPES:
            raise HistoryError("event %d: unknown type %r" % (i, ty))
        if ty == "invoke":
            if p in open_by_proc:
                raise HistoryError("event %d: process %r invokes while operation #%d is "
                                   "outstanding" % (i, p, open_by_proc[p].index))
            op = Op(len(ops), p, e["f"], e.get("key"), e.get("value"), None, "info", None, t,
                    None)
            open_by_proc[p] = op
            ops.append(op)
            continue
        op = open_by_proc.pop(p, None)
        if op is None:
            raise HistoryError("event %d: %s completion by process %r with nothing "
                               "outstanding" % (i, ty, p))
        if e["f"] != op.f or e.get("key") != op.key:
            raise HistoryError("event %d: completion %s(%r) does not match invoke #%d %s(%r)"
                               % (i, e["f"], e.get("key"), op.index, op.f, op.key))
        op.type = ty
        op.error = e.get("error")
        if ty == "info":
            continue  # outcome unknown: open until the end
        op.ret = t
        op.result = e.get("value")
    return ops
