"""nemesis: the faults of the chaos runs (issue 5 items 2 and 5).

Two kinds of fault, both aimed at nodes of a harness.Cluster:

- Network faults (class Net): packets between nodes' loopback addresses are
  dropped by nftables rules on `lo`, so a partitioned path is silent (SYNs and
  segments vanish; nothing is reset). Every run owns one table,
  `inet keel_chaos_<pid>`, holding a set of blocked (source, destination)
  address pairs and one output-hook rule dropping packets on `lo` whose pair
  is in the set. A partition adds pairs in both directions; heal flushes the
  set. Clients of the workloads connect from 127.0.0.1, which is never in the
  set: like Jepsen's control node, they see every node, and a partition shows
  up as a node that cannot reach its peers.
- Process faults (class Nemesis, through the harness): kill -9, SIGSTOP and
  SIGCONT, clean restart, kill of the coordinator leader, a clean restart of
  the whole cluster.

Partition shapes (Nemesis.partition, Jepsen's names in brackets):
  one        isolate one node                        [partition-random-node]
  halves     a random majority / minority split      [partition-random-halves]
  primaries  each of some current primary daemons alone [partition-primaries]
  leader     the coordinator leader alone
  ring       every node sees a majority, no two the same [partition-majorities-ring]
  bridge     two halves joined only through one node  [partition-bridge]

Invariants:
 1. The table is deleted whatever happens: Net.close() runs from the
    runner's finally, from atexit and from the SIGTERM/SIGINT handlers
    installed by install_signal_cleanup(); a table left behind by a run that
    was killed with SIGKILL is deleted by the next Net() (its pid is gone).
 2. Only addresses of 127.0.0.0/8 other than 127.0.0.1 are ever blocked.
 3. Every fault the Nemesis applies is undone by Nemesis.heal_all(): rules
    flushed, paused processes continued, stopped processes started again.
 4. Every choice is drawn from the Nemesis's random.Random, so a seed gives
    the same targets (given the same cluster state).
"""

import atexit
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cluster"))

import harness  # noqa: E402

TABLE_PREFIX = "keel_chaos_"
APT_LINE = "apt-get install -y nftables"


# -- nftables ---------------------------------------------------------------------

def nft_unavailable():
    """None if nftables can be used here, else the reason (with the apt line
    when the binary is missing)."""
    if shutil.which("nft") is None:
        return "nft not found; install it with: %s" % APT_LINE
    if os.geteuid() != 0:
        return "nftables needs root (running as uid %d)" % os.geteuid()
    try:
        p = subprocess.run(["nft", "list", "tables"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "nft failed: %s" % e
    if p.returncode != 0:
        return "nft list tables failed: %s" % p.stderr.decode("utf-8", "replace").strip()
    return None


def _nft(script):
    """Runs an nft script as one transaction; raises RuntimeError with nft's
    message when it fails."""
    p = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True,
                       timeout=10)
    if p.returncode != 0:
        raise RuntimeError("nft failed (%d): %s\nscript:\n%s"
                           % (p.returncode, p.stderr.decode("utf-8", "replace").strip(), script))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def delete_stale_tables():
    """Deletes keel_chaos_<pid> tables whose process is gone (a run killed
    with SIGKILL); returns their names."""
    p = subprocess.run(["nft", "list", "tables"], capture_output=True, timeout=10)
    gone = []
    for line in p.stdout.decode("utf-8", "replace").splitlines():
        m = re.fullmatch(r"table inet (%s(\d+))" % TABLE_PREFIX, line.strip())
        if m and not _pid_alive(int(m.group(2))):
            subprocess.run(["nft", "delete", "table", "inet", m.group(1)],
                           capture_output=True, timeout=10)
            gone.append(m.group(1))
    return gone


def _check_addr(a):
    ip = ipaddress.ip_address(a)
    if ip.version != 4 or ip not in ipaddress.ip_network("127.0.0.0/8") or a == "127.0.0.1":
        raise ValueError("refusing to block %s: only 127.0.0.2..127.255.255.254" % a)
    return a


class Net:
    """The drop rules of one run (invariant 1). Use as a context manager or
    call close()."""

    def __init__(self):
        why = nft_unavailable()
        if why:
            raise RuntimeError(why)
        delete_stale_tables()
        self.table = "%s%d" % (TABLE_PREFIX, os.getpid())
        self.blocked = set()        # (src, dst) pairs currently dropped
        self.lock = threading.Lock()
        self.closed = False
        # A table of ours that survived (same pid reused) is replaced.
        subprocess.run(["nft", "delete", "table", "inet", self.table],
                       capture_output=True, timeout=10)
        _nft("table inet %s {\n"
             "  set blocked { type ipv4_addr . ipv4_addr; }\n"
             "  chain out {\n"
             "    type filter hook output priority -10; policy accept;\n"
             "    oifname \"lo\" ip saddr . ip daddr @blocked drop\n"
             "  }\n"
             "}\n" % self.table)
        atexit.register(self.close)
        _live_nets.add(self)

    def block(self, pairs):
        """Drops packets for every (a, b) in pairs, in both directions."""
        new = set()
        for a, b in pairs:
            if a == b:
                continue
            new.add((_check_addr(a), _check_addr(b)))
            new.add((b, a))
        with self.lock:
            new -= self.blocked
            if not new:
                return
            elems = ", ".join("%s . %s" % p for p in sorted(new))
            _nft("add element inet %s blocked { %s }\n" % (self.table, elems))
            self.blocked |= new

    def partition(self, components):
        """Blocks every pair of addresses in different components (a list of
        lists of addresses); addresses in no component are not touched."""
        pairs = []
        for i, ca in enumerate(components):
            for cb in components[i + 1:]:
                pairs += [(a, b) for a in ca for b in cb]
        self.block(pairs)

    def heal(self):
        with self.lock:
            if self.closed:
                return
            _nft("flush set inet %s blocked\n" % self.table)
            self.blocked = set()

    def rules(self):
        """The table as nft lists it (for reports)."""
        p = subprocess.run(["nft", "list", "table", "inet", self.table], capture_output=True,
                           timeout=10)
        return p.stdout.decode("utf-8", "replace")

    def close(self):
        """Deletes the table (idempotent; never raises)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.blocked = set()
        try:
            subprocess.run(["nft", "delete", "table", "inet", self.table],
                           capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _live_nets.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_live_nets = set()


def install_signal_cleanup():
    """SIGTERM and SIGINT close every Net and then exit (status 128+signal),
    so a run that is interrupted leaves no rules behind."""
    def handler(signum, frame):
        for n in list(_live_nets):
            n.close()
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- shapes -------------------------------------------------------------------------

def shape_one(rng, nodes):
    n = rng.choice(nodes)
    return [[n], [m for m in nodes if m is not n]], "isolate %s" % n.name


def shape_halves(rng, nodes):
    s = list(nodes)
    rng.shuffle(s)
    k = len(s) // 2
    minority, majority = s[:k], s[k:]
    return [minority, majority], "minority %s | majority %s" % (_names(minority),
                                                                  _names(majority))


def shape_bridge(rng, nodes):
    s = list(nodes)
    rng.shuffle(s)
    bridge, rest = s[0], s[1:]
    k = len(rest) // 2
    a, b = rest[:k], rest[k:]
    return (_cut(a, b), "bridge %s between %s and %s" % (bridge.name, _names(a), _names(b)))


def ring_pairs(nodes):
    """Blocked pairs of a ring of overlapping majorities: nodes on a circle,
    each reaching those within distance r, r the smallest with 2r+1 at
    least a majority; pairs further apart are cut."""
    n = len(nodes)
    need = n // 2 + 1
    r = need // 2
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            d = min(j - i, n - (j - i))
            if d > r:
                pairs.append((nodes[i], nodes[j]))
    return pairs


def shape_ring(rng, nodes):
    s = list(nodes)
    rng.shuffle(s)
    return ring_pairs(s), "ring %s (each node reaches its neighbours within %d)" % (
        _names(s), (len(s) // 2 + 1) // 2)


def _cut(a, b):
    return [(x, y) for x in a for y in b]


def _names(nodes):
    return "[" + " ".join(n.name for n in nodes) + "]"


# -- primaries from the daemons' logs -------------------------------------------------

_SERVING = re.compile(r"event=partition_serving space=(\d+) partition=(\d+) epoch=(\d+)")


def primaries_from_logs(daemons):
    """{(space, partition): daemon} of the newest partition_serving event
    (highest epoch) in every daemon's logs: who was made primary last."""
    best = {}
    for d in daemons:
        for i in range(len(d.logs)):
            for m in _SERVING.finditer(d.log_text(i)):
                key = (int(m.group(1)), int(m.group(2)))
                ep = int(m.group(3))
                if key not in best or ep > best[key][0]:
                    best[key] = (ep, d)
    return {k: v[1] for k, v in best.items()}


# -- the nemesis ----------------------------------------------------------------------

class Nemesis:
    """Applies and undoes faults on a cluster. Every fault is recorded in
    self.events as a dict {t, kind, detail} (t from time.monotonic()
    relative to t0), for the report. Not thread-safe: one nemesis thread
    drives it."""

    def __init__(self, cluster, rng, net=None, t0=None, log=None):
        self.cluster = cluster
        self.rng = rng
        self.net = net              # a Net, or None when nftables is unavailable
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.events = []
        self.log = log or (lambda s: None)
        self.paused = set()         # nodes we SIGSTOPped
        self.down = set()           # nodes we killed or stopped and have not started
        self.down_periods = {}      # node name -> [[start, end or None]] (time.time())

    # -- bookkeeping --------------------------------------------------------------
    def note(self, kind, detail):
        ev = {"t": round(time.monotonic() - self.t0, 3), "kind": kind, "detail": detail}
        self.events.append(ev)
        self.log("%8.3f nemesis %s: %s" % (ev["t"], kind, detail))
        return ev

    def _went_down(self, node):
        self.down_periods.setdefault(node.name, []).append([time.time(), None])

    def _came_up(self, node):
        p = self.down_periods.get(node.name)
        if p and p[-1][1] is None:
            p[-1][1] = time.time()

    def nodes(self):
        return [n for n in self.cluster.all_nodes() if n.runs > 0 and not n.removed]

    def up_nodes(self, kind=None):
        return [n for n in self.nodes() if n.alive() and n not in self.down
                and (kind is None or n.kind == kind)]

    # -- network ------------------------------------------------------------------
    def partition(self, shape):
        """Cuts the network in the named shape (module docstring); returns
        the event, or None when the shape has no target now."""
        if self.net is None:
            raise RuntimeError("network faults need nftables: %s" % nft_unavailable())
        nodes = self.nodes()
        if shape == "one":
            comps, what = shape_one(self.rng, nodes)
            pairs = _comp_pairs(comps)
        elif shape == "halves":
            comps, what = shape_halves(self.rng, nodes)
            pairs = _comp_pairs(comps)
        elif shape == "bridge":
            pairs, what = shape_bridge(self.rng, nodes)
        elif shape == "ring":
            pairs, what = shape_ring(self.rng, nodes)
        elif shape == "leader":
            lead = self.cluster.leader()
            if lead is None:
                return None
            pairs = _cut([lead], [n for n in nodes if n is not lead])
            what = "isolate coordinator leader %s" % lead.name
        elif shape == "primaries":
            prim = sorted(set(primaries_from_logs(self.cluster.daemons).values()),
                          key=lambda d: d.name)
            prim = [d for d in prim if d in nodes]
            if not prim:
                return None
            k = self.rng.randint(1, max(1, len(prim) // 2))
            chosen = self.rng.sample(prim, k)
            rest = [n for n in nodes if n not in chosen]
            comps = [[d] for d in chosen] + [rest]
            pairs = _comp_pairs(comps)
            what = "isolate primaries %s each alone" % _names(chosen)
        else:
            raise ValueError("unknown partition shape %r" % shape)
        self.net.block([(a.host, b.host) for a, b in pairs])
        return self.note("partition-" + shape, what)

    def heal_net(self):
        if self.net is not None and self.net.blocked:
            self.net.heal()
            self.note("heal-network", "all drop rules removed")

    # -- processes ----------------------------------------------------------------
    def kill(self, node):
        self._went_down(node)
        node.kill9()
        self.down.add(node)
        return self.note("kill", "kill -9 %s" % node.name)

    def pause(self, node):
        self._went_down(node)
        node.pause()
        self.paused.add(node)
        return self.note("pause", "SIGSTOP %s" % node.name)

    def resume(self, node):
        if node in self.paused:
            self.paused.discard(node)
            if node.alive():
                node.resume()
            self._came_up(node)
            self.note("resume", "SIGCONT %s" % node.name)

    def start(self, node):
        """Starts a node we took down (waits until it answers PING)."""
        node.start(wait=True)
        self._came_up(node)
        self.down.discard(node)
        self.note("start", "started %s" % node.name)

    def clean_restart(self, node):
        self.note("stop", "SIGTERM %s (clean)" % node.name)
        self._went_down(node)
        node.stop()
        node.start(wait=True)
        self._came_up(node)
        self.note("start", "started %s" % node.name)

    def kill_leader(self):
        lead = self.cluster.leader()
        if lead is None:
            return None
        node_ev = self.kill(lead)
        node_ev["detail"] = "kill -9 coordinator leader %s" % lead.name
        return node_ev

    def full_restart(self):
        """Stops every daemon and then every coordinator cleanly, starts the
        coordinators (all at once, so a majority can elect) and then the
        daemons."""
        for n in list(self.paused):
            self.resume(n)
        self.note("full-restart", "clean stop of every process, then start")
        ds = [d for d in self.cluster.daemons if d.alive()]
        cs = [c for c in self.cluster.coordinators if c.alive() and not c.removed]
        for n in ds + cs:
            self._went_down(n)
        for d in ds:
            d.stop()
        for c in cs:
            c.stop()
        for c in self.cluster.coordinators:
            if not c.removed and c.runs > 0:
                c.start(wait=False)
        for c in self.cluster.coordinators:
            if not c.removed and c.runs > 0:
                c.wait_ready()
                self._came_up(c)
        self.down -= set(self.cluster.coordinators)
        for d in self.cluster.daemons:
            if d.runs > 0:
                d.start(wait=True)
                self._came_up(d)
                self.down.discard(d)
        self.note("full-restart-done", "every process started again")

    def heal_all(self):
        """Undoes every fault (invariant 3): network healed, paused nodes
        continued, downed nodes started (coordinators first)."""
        self.heal_net()
        for n in sorted(self.paused, key=lambda x: x.name):
            self.resume(n)
        down = sorted(self.down, key=lambda x: (x.kind != "coordinator", x.name))
        for n in down:
            if not n.alive():
                self.start(n)
            self.down.discard(n)


def _comp_pairs(comps):
    pairs = []
    for i, ca in enumerate(comps):
        for cb in comps[i + 1:]:
            pairs += _cut(ca, cb)
    return pairs


__all__ = ["Net", "Nemesis", "nft_unavailable", "install_signal_cleanup", "ring_pairs",
           "primaries_from_logs", "delete_stale_tables", "APT_LINE", "harness"]
