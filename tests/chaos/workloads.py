"""workloads: concurrent clients that record histories (issue 5 item 3).

Every client is a thread with its own raw RESP connection (harness.Conn) to
one daemon at a time, chosen at random among the daemons. Clients retry
nothing by themselves: every request sent is one operation of the history,
an `invoke` followed by exactly one completion:

  ok    the reply says it happened (a read's value is the value read)
  fail  it certainly did not happen: an error reply, which by the protocol
        changes nothing (CMPFAIL, NOTFOUND, TRYAGAIN, NOQUORUM, UNAVAILABLE...)
        except the ones that say "may or may not have been applied"
  info  unknown: a timeout, a closed connection or a protocol error after the
        request was sent, or an error reply saying the outcome is unknown

A process that got `info` may still have its request in flight, so the thread
continues as a new process (process + number of threads), as Jepsen does: a
process has at most one operation open. A connection that cannot be opened
records nothing (no request was sent) and the thread tries another daemon.

Workloads (history format: history.py; the space names are the runner's):
  registers  GET / PUT / CPUT on a few keys of space `reg` (attribute v holds
             an integer written as text, unique for every write);
             f = read (result None or int) | write (value int) |
             cas (value [expected, new]; a fail carries error CMPFAIL or
             NOTFOUND)
  set        PUT of unique keys `e<n>` to space `set`: f = element-add,
             value n, key "set"; the final read (final_set_read) records
             f = read-all with the list of n found by a SEARCH of the whole
             space plus a GET of every key ever attempted
  counter    `SEQ client_id seq ADD ctr c0 n delta` (f = add, value delta;
             the ok completion's value is the new total ADD returned) and
             GET (f = read, the total); after an `info` add the thread sends
             the same (client_id, seq) again (each attempt its own
             operation, f = add-retry, at most 3 retries), so exactly-once
             retries are exercised

Invariants:
 1. Every invoke gets exactly one completion (the thread completes it before
    sending anything else; stop() waits for the threads).
 2. Write values are unique per key across the whole run (one counter).
 3. Each process has at most one open operation.
"""

import itertools
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cluster"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import history  # noqa: E402
from harness import Conn, ProtocolError, RespError  # noqa: E402

OP_TIMEOUT = 2.5          # seconds a client waits for one reply
REG_SPACE, SET_SPACE, CTR_SPACE = "reg", "set", "ctr"
CTR_KEY = "c0"
SET_KEY = "set"            # the key of the set workload's operations
SPACE_TEXTS = {
    REG_SPACE: "space reg\nkey k\nattributes v\ncreate %d partitions\ntolerate %d failures\n",
    SET_SPACE: "space set\nkey k\nattributes v\ncreate %d partitions\ntolerate %d failures\n",
    CTR_SPACE: "space ctr\nkey k\nattributes int n\ncreate %d partitions\ntolerate %d failures\n",
}
UNKNOWN_MARK = "may or may not"


# -- clients --------------------------------------------------------------------------

class Unknown(Exception):
    """The outcome of a sent request is unknown."""


def classify_error(e):
    """'info' for an error reply that says the outcome is unknown, else 'fail'."""
    return "info" if UNKNOWN_MARK in e.text else "fail"


class Client(threading.Thread):
    """Base client: one thread, one connection at a time. Subclasses give
    step(), which performs one operation through self.request()."""

    def __init__(self, workload, index, rng):
        super().__init__(daemon=True, name="%s-%d" % (workload.name, index))
        self.w = workload
        self.rec = workload.rec
        self.process = index
        self.rng = rng
        self.conn = None
        self.target = None
        self.halt = workload.halt
        self.errors = {}           # error code -> count (for the report)

    # -- connections
    def _connect(self):
        while not self.halt.is_set():
            daemons = [d for d in self.w.daemons if d.runs > 0]
            d = self.rng.choice(daemons)
            try:
                self.conn = Conn(d.host, d.port, timeout=OP_TIMEOUT)
                self.target = d
                return True
            except OSError:
                self.conn = None
                self.halt.wait(0.05)
        return False

    def _drop_conn(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def request(self, f, key, value, args):
        """One operation: invoke, send args, complete. Returns (type, reply)
        where reply is the decoded reply (RespError for an error)."""
        if self.conn is None and not self._connect():
            return None, None
        inv = self.rec.invoke(self.process, f, key, value)
        inv["node"] = self.target.name   # which daemon was asked (for reading failures)
        try:
            self.conn.send(*args)
            r = self.conn.read()
        except (OSError, ProtocolError, ValueError) as e:
            self.rec.info(inv, error="%s: %s" % (type(e).__name__, e))
            self._new_process()
            return "info", None
        if isinstance(r, RespError):
            t = classify_error(r)
            self.errors[r.code] = self.errors.get(r.code, 0) + 1
            if t == "info":
                self.rec.info(inv, error=r.text)
            else:
                self.rec.fail(inv, error=r.code)
            if t == "info":
                self._new_process()
            elif r.code in ("TRYAGAIN", "NOQUORUM", "UNAVAILABLE") and self.rng.random() < 0.5:
                self._drop_conn()     # this daemon cannot serve now: try another one
            return t, r
        return "ok_pending", (inv, r)

    def _new_process(self):
        """After an unknown outcome: a new process id, a new connection."""
        self._drop_conn()
        self.process += self.w.nprocs

    def run(self):
        try:
            while not self.halt.is_set():
                self.step()
                if self.rng.random() < 0.02:
                    self._drop_conn()     # move to another daemon now and then
                self.halt.wait(self.w.think_s * self.rng.random())
        finally:
            self._drop_conn()


def _int_or_raw(b):
    try:
        return int(b)
    except (TypeError, ValueError):
        return b.decode("utf-8", "replace") if isinstance(b, bytes) else b


def _reg_value(r):
    """GET reply -> None (absent) or the integer in attribute v."""
    if r is None:
        return None
    if isinstance(r, list) and len(r) >= 2:
        return _int_or_raw(r[1])
    raise ProtocolError("unexpected GET reply %r" % (r,))


class RegisterClient(Client):
    def step(self):
        key = self.rng.choice(self.w.keys)
        x = self.rng.random()
        if x < 0.4:
            t, r = self.request("read", key, None, ("GET", REG_SPACE, key))
            if t == "ok_pending":
                inv, reply = r
                try:
                    v = _reg_value(reply)
                except ProtocolError as e:
                    self.rec.info(inv, error=str(e))
                    self._new_process()
                    return
                self.last[key] = v
                self.rec.ok(inv, v)
        elif x < 0.7:
            v = self.w.unique()
            t, r = self.request("write", key, v, ("PUT", REG_SPACE, key, "v", str(v)))
            self._finish_simple(t, r, v, key)
        else:
            v = self.w.unique()
            seen = self.last.get(key)
            exp = seen if seen is not None and self.rng.random() < 0.8 else \
                self.rng.randint(1, self.w.counter_peek())
            t, r = self.request("cas", key, [exp, v],
                                ("CPUT", REG_SPACE, key, "IF", "v", str(exp), "SET", "v", str(v)))
            self._finish_simple(t, r, [exp, v], key, newval=v)

    def _finish_simple(self, t, r, value, key, newval=None):
        if t != "ok_pending":
            return
        inv, reply = r
        if reply == "OK":
            self.rec.ok(inv, value)
            self.last[key] = newval if newval is not None else value
        else:
            self.rec.info(inv, error="unexpected reply %r" % (reply,))
            self._new_process()

    def __init__(self, *a):
        super().__init__(*a)
        self.last = {}


class SetClient(Client):
    def step(self):
        n = self.w.unique()
        key = "e%d" % n
        with self.w.lock:
            self.w.attempted.append(n)
        t, r = self.request("element-add", SET_KEY, n, ("PUT", SET_SPACE, key, "v", "x"))
        if t == "ok_pending":
            inv, reply = r
            if reply == "OK":
                self.rec.ok(inv, n)
            else:
                self.rec.info(inv, error="unexpected reply %r" % (reply,))
                self._new_process()


class CounterClient(Client):
    def __init__(self, *a):
        super().__init__(*a)
        self.client_id = self.rng.randrange(1, 2 ** 62)
        self.seq = 0
        self.retry = None          # (seq, delta, attempts) of an add whose outcome is unknown

    def step(self):
        if self.retry is None and self.rng.random() < 0.3:
            t, r = self.request("read", CTR_KEY, None, ("GET", CTR_SPACE, CTR_KEY))
            if t == "ok_pending":
                inv, reply = r
                try:
                    v = _reg_value(reply)
                except ProtocolError as e:
                    self.rec.info(inv, error=str(e))
                    self._new_process()
                    return
                self.rec.ok(inv, v)
            return
        if self.retry is not None:
            seq, delta, attempts = self.retry
        else:
            self.seq += 1
            seq, delta, attempts = self.seq, self.rng.randint(1, 5), 0
        # A retry is answered with the ORIGINAL result (the total when the
        # first attempt was applied, maybe long before this call), so its
        # reply is not an observation of the counter at this time: retries
        # are recorded as f = add-retry, which the counter checker ignores
        # (sound: the first attempt, unknown, already allows its delta).
        f = "add" if attempts == 0 else "add-retry"
        t, r = self.request(f, CTR_KEY, delta,
                            ("SEQ", str(self.client_id), str(seq), "ADD", CTR_SPACE, CTR_KEY, "n",
                             str(delta)))
        if t == "ok_pending":
            inv, reply = r
            if isinstance(reply, int):
                self.rec.ok(inv, reply)
                self.retry = None
            else:
                self.rec.info(inv, error="unexpected reply %r" % (reply,))
                self._new_process()
                self.retry = (seq, delta, attempts + 1) if attempts < 3 else None
        elif t == "info":
            self.retry = (seq, delta, attempts + 1) if attempts < 3 else None
        elif t == "fail":
            # A definite failure of a retry says nothing about the first
            # attempt; keep the same seq while a retry budget is left.
            self.retry = (seq, delta, attempts + 1) if (attempts > 0 and attempts < 3) else None


# -- the workload ------------------------------------------------------------------------

class Workload:
    """Every client of a run, sharing one Recorder. start(), then stop()
    (waits for every client: invariant 1), then final_set_read()."""

    name = "all"

    def __init__(self, cluster, rng, registers=4, sets=2, counters=2, keys=3, think_s=0.02,
                 rec=None):
        self.cluster = cluster
        self.daemons = cluster.daemons
        self.rec = rec or history.Recorder()
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.keys = ["r%d" % i for i in range(keys)]
        self.attempted = []
        self.think_s = think_s
        self._unique = itertools.count(1)
        self.nprocs = registers + sets + counters
        self.clients = []
        i = 0
        for cls, n in ((RegisterClient, registers), (SetClient, sets), (CounterClient, counters)):
            for _ in range(n):
                c = cls(self, i, random.Random(rng.randrange(2 ** 63)))
                c.name = "%s-%d" % (cls.__name__.replace("Client", "").lower(), i)
                self.clients.append(c)
                i += 1

    def unique(self):
        with self.lock:
            return next(self._unique)

    def counter_peek(self):
        """A value at least the largest handed out (for a CPUT that expects
        a value this client has not read)."""
        return self.unique()

    def start(self):
        for c in self.clients:
            c.start()

    def stop(self, timeout=OP_TIMEOUT * 4):
        self.halt.set()
        for c in self.clients:
            c.join(timeout)
        stuck = [c.name for c in self.clients if c.is_alive()]
        if stuck:
            raise RuntimeError("clients did not stop: %s" % stuck)

    def errors(self):
        out = {}
        for c in self.clients:
            for k, v in c.errors.items():
                out[k] = out.get(k, 0) + v
        return out

    # -- final reads, after heal and recovery -----------------------------------------
    def _call_until(self, args, deadline):
        """args on live daemons until a reply that is not TRYAGAIN/NOQUORUM/
        UNAVAILABLE or a connection error; (reply or None, last error)."""
        last = None
        i = 0
        while time.monotonic() < deadline:
            live = [d for d in self.daemons if d.live()] or self.daemons
            d = live[i % len(live)]
            i += 1
            try:
                return d.call(*args, timeout=OP_TIMEOUT), None
            except RespError as e:
                last = e
                if e.code not in ("TRYAGAIN", "NOQUORUM", "UNAVAILABLE"):
                    return e, e
            except (OSError, ProtocolError) as e:
                last = e
            time.sleep(0.05)
        return None, last

    def final_set_read(self, timeout=30):
        """One read of the whole set, recorded as process "final" f=read:
        SEARCH of the space plus GET of every attempted element. Returns the
        completion op (type fail when it could not be read in time)."""
        deadline = time.monotonic() + timeout
        inv = self.rec.invoke("final", "read-all", SET_KEY, None)
        found = set()
        r, err = self._call_until(("SEARCH", SET_SPACE), deadline)
        if not isinstance(r, list):
            return self.rec.fail(inv, error="SEARCH: %r" % (err,))
        for obj in r:
            k = obj[1].decode("utf-8", "replace") if isinstance(obj, list) and len(obj) > 1 \
                else ""
            if k.startswith("e") and k[1:].isdigit():
                found.add(int(k[1:]))
        with self.lock:
            attempted = list(self.attempted)
        for n in attempted:
            r, err = self._call_until(("GET", SET_SPACE, "e%d" % n), deadline)
            if err is not None or (r is None and time.monotonic() >= deadline):
                return self.rec.fail(inv, error="GET e%d: %r" % (n, err))
            if isinstance(r, list):
                found.add(n)
        return self.rec.ok(inv, sorted(found))

    def final_counter_read(self, timeout=15):
        """A last read of the counter (process "final")."""
        deadline = time.monotonic() + timeout
        inv = self.rec.invoke("final", "read", CTR_KEY, None)
        r, err = self._call_until(("GET", CTR_SPACE, CTR_KEY), deadline)
        if err is not None or r is None:
            return self.rec.fail(inv, error="GET: %r" % (err,))
        return self.rec.ok(inv, _reg_value(r))


def setup_spaces(cluster, tolerate, partitions=4, timeout=30):
    """Creates the three spaces and the counter object (PUT ctr c0 n 0,
    retried until acknowledged; not part of the history)."""
    for name in (REG_SPACE, SET_SPACE, CTR_SPACE):
        cluster.write(["SPACE.ADD", SPACE_TEXTS[name] % (partitions, tolerate)], timeout=timeout)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for d in cluster.daemons:
            try:
                if d.call("PUT", CTR_SPACE, CTR_KEY, "n", "0", timeout=2.0) == "OK":
                    return
            except (RespError, OSError, ProtocolError, socket.timeout) as e:
                last = e
        time.sleep(0.1)
    raise harness.WaitTimeout("the counter object was not created within %ds: %r"
                              % (timeout, last))
