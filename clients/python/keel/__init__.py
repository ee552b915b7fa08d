"""keel: Python client for the keel key-value store (standard library only).

The shape follows the HyperDex tutorial:

    import keel
    a = keel.Admin('127.0.0.1', 2012)
    a.add_space('''
        space phonebook
        key username
        attributes first, last, int phone
        subspace first, last, phone
        create 8 partitions
        tolerate 2 failures
    ''')
    c = keel.Client('127.0.0.1', 2012)
    c.put('phonebook', 'jsmith1', {'first': 'John', 'last': 'Smith', 'phone': 6075551024})
    c.get('phonebook', 'jsmith1')
    # {'first': 'John', 'last': 'Smith', 'phone': 6075551024}
    c.search('phonebook', {'first': 'John', 'phone': ('>=', 6075550000)})

Values are str, int, float or bytes. Replies come back typed by the space's
schema: int attributes as int (the server sends them as RESP integers), float
attributes as float, string attributes as str (UTF-8; bytes that are not UTF-8
are kept with errors='surrogateescape', so a value read back can be written
back unchanged). Which attributes are floats is learnt from SPACE.DESCRIBE,
cached per space and refreshed once when a reply does not fit the cache (an
unknown attribute, or a value of the wrong kind).

Errors raise KeelError with .code (the server's code word, e.g. 'NOSPACE') and
.message; connection problems raise KeelError with code 'CONNECTION'.

Standalone servers. After a connection problem the next call connects again;
no request is ever re-sent automatically, so a write is never applied twice
behind your back.

Clusters. Client(host, port) and Admin(host, port) take the address of a
standalone server, of any coordinator (the tutorial's
keel.Client('127.0.0.1', 1982)) or of any daemon, and find the rest
themselves. The first call asks that address INFO server what it is:

  standalone   every command goes to it, as above.
  coordinator  administration (SPACE.*, CLUSTER.*, and SPACE.DESCRIBE for the
               schema cache) goes to the coordinators, learnt from
               CLUSTER.STATUS, the leader first; single-key data commands go
               to their partition's primary (below); SEARCH and COUNT, and
               single-key commands the routing table cannot place, go to a
               daemon listed ONLINE there (each client starts at a random
               one), which forwards a request to its partition's primary (or
               fans a SEARCH out).
  daemon       the same, except that the daemon list starts with that daemon
               (used while it works); the coordinators are learnt from its
               INFO (# Lease section), and the other daemons from
               CLUSTER.STATUS when it fails.

PING, ECHO, INFO and QUIT always go to the address given.

Direct routing (clusters). The single-key data commands (PUT GET DEL CPUT
ADD, and SEQ-wrapped writes) go straight to the daemon that leads the key's
partition, by a routing table: CLUSTER.ROUTES, asked of the coordinators
(linearizable, the leader first) before the first such command (bounded like
discovery, DISCOVERY_SECONDS) and again when the table looks stale. A key's
partition is XXH64(key bytes, seed 0) % partitions (partition_of; the xxhash
module when installed, else keel._xxh64). Those requests go on a second
connection to each daemon, on which CLIENT.REDIRECT ON is sent first (in the
same write), so that a daemon that does not lead the partition by its own
map answers -MOVED partition host:port map_version instead of forwarding;
nothing was applied then, and the call is retried (within its retry budget,
below) after a new table is fetched: from that daemon when the MOVED's
map_version is newer than the table's, else from the coordinators; the next
attempt goes to the primary of the new table, or to the daemon the MOVED
named when the table still names the one that answered. After MOVED_LIMIT
(2) MOVED replies a call stops redirecting: its later attempts go to the
daemon list (which forwards), so that daemons whose maps disagree cannot
bounce it. A key whose partition the table cannot place (a space it does not
know, a partition with no live replica, a primary not ONLINE in the table or
whose connection failed within SUSPECT_SECONDS) goes to the daemon list as
well, after the table is fetched again if the one held is older than
ROUTES_STALE_SECONDS (0.5 s) and still cannot place it. Before every retry of a
single-key command after another error the table is fetched again from the
coordinators (a primary may have failed over). A fetch that fails keeps the
table held and is not tried again for ROUTES_RETRY_SECONDS (1 s), or
ROUTES_UNSUPPORTED_SECONDS (60 s) after an error reply (a server without
CLUSTER.ROUTES: the daemons then forward every request, as before). A table
never replaces one with a newer map version. Client.stats counts direct
sends, forwarded ones, MOVED replies, tables fetched and fallbacks;
Client.routes is the table held.

Exactly-once writes (clusters). Every write (put, delete, cond_put,
atomic_add, and PUT DEL CPUT ADD given to execute) is sent to the daemons as
SEQ client_id client_seq <write> (docs/cluster.md): client_id is a random
63-bit number chosen when the Client (or Admin) object is made, client_seq
grows by one for every new write of that object, and every retry of a write
carries the same pair. The daemons apply a write with a given pair once
however often it is retried, through any daemon and across a failover (the
client table is replicated), and answer a retry with the original result. So
every write, ADD and CPUT included, is safe to retry after any failure,
including a connection that broke after the request was sent, a timeout, or
TRYAGAIN "may or may not have been applied". A SEQ given to execute is sent
as it is (the caller's own ids) and retried the same way.

This holds for one outstanding write per client id (per partition) at a
time, so an object sends one write at a time: a thread's write call, with all
its retries, holds the object's write lock, and other threads' writes through
the same object wait for it (reads do not). An object copied into a forked
process keeps its client id: make a new one there. If a write still fails
when its retries run out, it may or may not have been applied; calling again
is a new write (a new client_seq) and may apply it a second time.

On a cluster a failed call is retried, for at most retry_timeout seconds
(default 15) from its start: a server not yet tried in the call is tried at
once, one already tried after a wait of 50 ms doubling up to 500 ms, and the
daemon list is refreshed from a coordinator before every retry (after a
MOVED, the routing table instead). Which errors are retried depends on the
command:

  administration     connection errors, TRYAGAIN (to the coordinator named in
                     "leader is host:port", else the next) and NOQUORUM.
                     add_space and rm_space are retried too: if a first attempt
                     was applied but its answer lost, the retry answers ERR
                     (the space exists) or NOSPACE.
  data commands      connection errors (before or after the request was
                     sent, timeouts included), TRYAGAIN and NOQUORUM: to the
                     key's primary by the table (fetched again first) unless
                     it failed, else on the next ONLINE daemon; and MOVED
                     (nothing applied; see Direct routing). Reads are
                     side-effect free and writes are exactly-once (above),
                     so a retried write is answered as its first attempt
                     was (a delete that was applied answers True, an
                     atomic_add the one sum). ERR
                     stale request (a later write of this client id was
                     already accepted on the partition) is raised.
  any data command   NOSPACE from a daemon while the coordinators know the
                     space (its map is behind, e.g. just after add_space):
                     retried; nothing was applied.

UNAVAILABLE (a partition with no live replica) and every other error are
raised at once; when retries run out the last error is raised. A retry gets
at most the time left (at least 0.1 s) as its timeout; retry_timeout=0
disables retries, and with them direct routing (a MOVED could not be
retried): every data command then goes to the daemon list, which forwards.

A Client or Admin may be shared between threads (each connection serves one
call at a time, and on a cluster one write call at a time is in flight, see
above); for parallel requests use one Client per thread.

Invariants:
  1. Every public method sends exactly the commands documented in
     docs/protocol.md for it (atomic_add: one ADD per attribute, in the order
     given; on a cluster each write wrapped in SEQ), re-sent only by the rules
     above; nothing else is sent except SPACE.DESCRIBE (schema cache;
     whether a NOSPACE comes from a stale daemon), one INFO server on first
     use, and on a cluster INFO lease to daemons and CLUSTER.STATUS to
     coordinators (to learn addresses), CLUSTER.ROUTES to coordinators (and
     to a daemon that answered MOVED with a newer map) for the routing
     table, and CLIENT.REDIRECT ON first on every new connection that
     carries requests sent straight to primaries (never on any other).
  5. A request answered MOVED was not applied; a call is redirected at most
     MOVED_LIMIT times, and a single-key request goes straight to a daemon
     only when the routing table held names it as the partition's ONLINE
     primary (or a MOVED of this call named it).
  2. A method either returns a value built from well-formed replies or raises
     KeelError; it never returns partial results silently.
  3. On a cluster, all attempts of one write call carry the same
     (client_id, client_seq), a new write call gets a larger client_seq than
     every earlier one of the object, and no two write calls of one object
     overlap, so the daemons apply each write call at most once. On a
     standalone server nothing is re-sent.
  4. Retries are bounded: no wait ends after the call's deadline, and no
     attempt starts after it.
"""

import json
import random
import threading
import time

from ._resp import Connection, KeelError, Status, to_bytes

try:  # the C implementation (Debian: python3-xxhash) when it is installed
    import xxhash as _xxhash
    if hasattr(_xxhash, "xxh64_intdigest"):
        def _hash64(data):
            return _xxhash.xxh64_intdigest(data, seed=0)
    else:  # xxhash < 2.0
        def _hash64(data):
            return _xxhash.xxh64(data, seed=0).intdigest()
except ImportError:
    from ._xxh64 import xxh64 as _xxh64_pure

    def _hash64(data):
        return _xxh64_pure(data, 0)

__all__ = ["Client", "Admin", "KeelError", "OPS", "RETRY_TIMEOUT", "parse_description",
           "partition_of", "Routes"]

OPS = ("=", "<", "<=", ">", ">=")

RETRY_TIMEOUT = 15.0         # default bound on one call's retries, seconds
BACKOFF_FIRST = 0.05         # first wait before asking a server again
BACKOFF_MAX = 0.5            # the wait doubles up to this
MIN_ATTEMPT_TIMEOUT = 0.1    # a retry gets at least this long to answer
SUSPECT_SECONDS = 2.0        # an address that failed is avoided this long
DISCOVERY_SECONDS = 2.0      # bound on learning the cluster on first use
MOVED_LIMIT = 2              # MOVED replies in one call before it stops redirecting
ROUTES_RETRY_SECONDS = 1.0   # after a routes fetch failed (connection, TRYAGAIN...)
ROUTES_UNSUPPORTED_SECONDS = 60.0  # after one answered an error (no CLUSTER.ROUTES)
ROUTES_STALE_SECONDS = 0.5   # a key the table cannot place refetches it at most this often

# Data commands (see the module documentation): reads, writes (sent as SEQ
# on a cluster), and SEQ itself (a write the caller already numbered).
_DATA_KINDS = {"GET": "read", "SEARCH": "read", "COUNT": "read",
               "PUT": "write", "DEL": "write", "ADD": "write", "CPUT": "write",
               "SEQ": "seq"}
MAX_CLIENT_ID = (1 << 63) - 1
# Single-key data commands: sent straight to the key's primary on a cluster.
_KEYED = ("GET", "PUT", "DEL", "CPUT", "ADD")
# Commands always answered by the address given.
_LOCAL = ("PING", "ECHO", "INFO", "QUIT")

_TYPES = ("string", "int", "float")


def _text(b):
    return b.decode("utf-8", "surrogateescape")


def _info_fields(text):
    """name -> value for the 'name:value' lines of an INFO reply (the first
    occurrence of a name wins)."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        name = name.strip()
        if sep and not name.startswith("#") and name not in out:
            out[name] = value.strip()
    return out


def _parse_addr(text):
    """'host:port' (or '[v6]:port') -> (host, port), or None."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port))


def _leader_of(message):
    """The address in a 'TRYAGAIN leader is host:port ...' message, or None."""
    words = message.split()
    if len(words) >= 3 and words[0] == "leader" and words[1] == "is":
        return _parse_addr(words[2])
    return None


def _check(reply):
    """Raises a KeelError reply; returns any other reply unchanged."""
    if isinstance(reply, KeelError):
        raise reply
    return reply


def _expect(cond, what):
    if not cond:
        raise KeelError("CONNECTION", "unexpected reply: %s" % what)


def parse_description(text):
    """Parses a canonical space description (as SPACE.DESCRIBE returns it)
    into (key_name, [(attr, type), ...]). Only the clauses the client needs
    are read; types default to 'string' as in the space language."""
    key_name = None
    attrs = []
    for line in text.splitlines():
        words = line.replace(",", " , ").split()
        if not words:
            continue
        if words[0] == "key" and len(words) >= 2:
            key_name = words[1]
        elif words[0] == "attributes":
            for item in " ".join(words[1:]).split(","):
                parts = item.split()
                if len(parts) == 1:
                    attrs.append((parts[0], "string"))
                elif len(parts) == 2 and parts[0] in _TYPES:
                    attrs.append((parts[1], parts[0]))
    return key_name, attrs


def partition_of(key, partitions):
    """The partition of key (str as UTF-8, or bytes) in a space of
    `partitions` partitions: XXH64(key, seed 0) % partitions, as the
    servers place it."""
    return _hash64(to_bytes(key)) % partitions


def _parse_moved(message):
    """'partition host:port map_version' (the text of a MOVED error) ->
    (partition, (host, port), map_version), or None."""
    words = message.split()
    if len(words) != 3 or not words[0].isdigit() or not words[2].isdigit():
        return None
    addr = _parse_addr(words[1])
    if addr is None:
        return None
    return int(words[0]), addr, int(words[2])


class _Direct(tuple):
    """A daemon address (equal to, and hashing like, the plain (host, port))
    marking an attempt sent straight to a partition's primary: it goes on the
    connection with CLIENT.REDIRECT ON."""
    __slots__ = ()


class Routes:
    """A routing table: a CLUSTER.ROUTES reply, parsed (read-only).

    .version    the map version it was made from
    .daemons    {daemon_id: ((host, port), state)}
    .spaces     {space name (bytes): [primary daemon id per partition, 0 when
                the partition has no live replica]}
    """

    __slots__ = ("version", "daemons", "spaces")

    def __init__(self, version, daemons, spaces):
        self.version = version
        self.daemons = daemons
        self.spaces = spaces

    @classmethod
    def parse(cls, reply):
        """The table from a CLUSTER.ROUTES reply; raises ValueError when the
        reply does not have its documented shape."""
        def need(cond):
            if not cond:
                raise ValueError("CLUSTER.ROUTES answered %s" % repr(reply)[:200])

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        need(isinstance(reply, list) and len(reply) == 3)
        version, dlist, slist = reply
        need(is_int(version) and version >= 0)
        need(isinstance(dlist, list) and isinstance(slist, list))
        daemons = {}
        for d in dlist:
            need(isinstance(d, list) and len(d) == 4)
            did, host, port, state = d
            need(is_int(did) and did > 0 and isinstance(host, bytes) and host
                 and is_int(port) and 0 < port < 65536 and isinstance(state, bytes))
            daemons[did] = ((_text(host), port), _text(state))
        spaces = {}
        for sp in slist:
            need(isinstance(sp, list) and len(sp) == 3)
            name, n, prim = sp
            need(isinstance(name, bytes) and is_int(n) and n > 0
                 and isinstance(prim, list) and len(prim) == n
                 and all(is_int(x) and x >= 0 for x in prim))
            spaces[bytes(name)] = list(prim)
        return cls(version, daemons, spaces)

    def lookup(self, space, key):
        """(partition, primary daemon id, (host, port) or None, state or
        None) for key (str or bytes) in space, or None when the table does
        not know the space. The id is 0 when the partition has no live
        replica."""
        prim = self.spaces.get(to_bytes(space))
        if prim is None:
            return None
        part = partition_of(key, len(prim))
        did = prim[part]
        addr, state = self.daemons.get(did, (None, None))
        return part, did, addr, state

    def primary(self, space, key):
        """The (host, port) to send key's requests to: its partition's
        primary when the table lists it ONLINE, else None (unknown space, no
        live replica, or a primary not ONLINE)."""
        hit = self.lookup(space, key)
        if hit is None or hit[2] is None or hit[3] != "ONLINE":
            return None
        return hit[2]


class _Schema:
    def __init__(self, key_name, attrs):
        self.key_name = key_name
        self.types = dict(attrs)


class _Base:
    def __init__(self, host="127.0.0.1", port=2012, timeout=10.0,
                 retry_timeout=RETRY_TIMEOUT):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retry_timeout = retry_timeout
        self._conn = Connection(host, port, timeout)
        self._seed = (host, int(port))
        self._lock = threading.RLock()   # guards everything below
        self._mode = None                # learnt from INFO server on first use
        self._conns = {}                 # (host, port) -> Connection (cluster)
        self._coords = []                # coordinator client addresses
        self._cidx = 0                   # the coordinator to ask next
        self._daemons = []               # daemons to send data commands to
        self._didx = 0                   # the daemon to ask next
        self._suspect = {}               # address -> monotonic time it failed
        self._daemons_known = False      # _daemons came from CLUSTER.STATUS
        # Exactly-once writes: one write call in flight at a time (held for
        # the whole call, retries included; taken before _lock, never after).
        self._write_lock = threading.Lock()
        self._client_id = random.SystemRandom().randint(1, MAX_CLIENT_ID)
        self._client_seq = 0             # the last client_seq used
        # Direct routing (clusters): the routing table, connections with
        # CLIENT.REDIRECT ON (address -> Connection), and when a table may
        # be asked for again after a failed fetch.
        self._routes = None              # a Routes, or None
        self._routes_at = None           # monotonic time of the last table received
        self._routes_next = 0.0          # no fetch before this (after a failure)
        self._rconns = {}
        self._stats = {"direct": 0, "forwarded": 0, "moved": 0, "route_fetches": 0,
                       "route_fetch_failures": 0, "fallbacks": 0}

    def close(self):
        """Closes every connection (a later call opens new ones)."""
        with self._lock:
            conns = list(self._conns.values()) + list(self._rconns.values())
        self._conn.close()
        for c in conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def client_id(self):
        """The random id this object's writes carry on a cluster (SEQ)."""
        return self._client_id

    @property
    def stats(self):
        """Counters of direct routing on a cluster (a copy; see the module
        documentation): direct (attempts sent straight to a key's primary),
        forwarded (attempts of single-key commands sent to a daemon that
        forwards them), moved (MOVED replies), route_fetches (routing tables
        received), route_fetch_failures, fallbacks (calls that stopped
        redirecting after MOVED_LIMIT MOVED replies), and routes_version
        (the map version of the table held, 0 for none)."""
        with self._lock:
            out = dict(self._stats)
            out["routes_version"] = self._routes.version if self._routes else 0
        return out

    @property
    def routes(self):
        """The routing table held (a Routes), or None (not fetched yet, or
        not a cluster)."""
        with self._lock:
            return self._routes

    @property
    def mode(self):
        """What the address given is: 'standalone', 'coordinator' or
        'daemon' (asked with INFO server on first use)."""
        return self._discover()

    def execute(self, *args):
        """Sends one raw command; returns the reply (Status for +..., int,
        bytes, None, list) or raises KeelError for an error reply. On a
        cluster the command goes where its name says (see the module
        documentation) and is retried by the same rules."""
        return _check(self._call(args))

    def ping(self):
        """True if the server answers PONG."""
        r = self.execute("PING")
        _expect(r == "PONG", "PING answered %r" % (r,))
        return True

    def _ok(self, *args):
        r = self.execute(*args)
        _expect(isinstance(r, Status) and r == "OK", "%s answered %r" % (args[0], r))
        return True

    # -- routing ------------------------------------------------------------

    def _call(self, args):
        """Sends args where they belong; returns the reply, or the error as
        a KeelError value (standalone: connection errors are raised, as
        Connection.call does)."""
        name = _text(to_bytes(args[0])).upper() if args else ""
        if not args or name in _LOCAL:
            return self._conn.call(*args)
        if self._discover() == "standalone":
            return self._conn.call(*args)
        kind = _DATA_KINDS.get(name)
        if kind is None:
            return self._coord_call(args, time.monotonic() + self.retry_timeout, True)
        if kind == "read":
            return self._data_call(args, args)
        if kind == "seq":
            return self._data_call(args, args[3:])
        with self._write_lock:
            self._client_seq += 1
            return self._data_call(("SEQ", self._client_id, self._client_seq) + tuple(args),
                                   args)

    def _discover(self):
        with self._lock:
            if self._mode is not None:
                return self._mode
            r = self._conn.call("INFO", "server")
            mode = "standalone"
            if isinstance(r, bytes):
                m = _info_fields(_text(r)).get("mode")
                if m in ("coordinator", "daemon"):
                    mode = m
            if mode != "standalone":
                self._conn.check_before_send = True
                self._conns[self._seed] = self._conn
                if mode == "coordinator":
                    self._coords = [self._seed]
                else:
                    self._daemons = [self._seed]
            self._mode = mode
        # Learn the rest at once, so that the address given may fail later
        # (best effort, bounded; calls retry on their own).
        deadline = time.monotonic() + DISCOVERY_SECONDS
        if mode == "coordinator":
            self._refresh(deadline)
        elif mode == "daemon":
            self._learn_coords_from_daemons(deadline)
        return mode

    def _conn_for(self, addr):
        """The pooled connection to addr: with CLIENT.REDIRECT ON for a
        _Direct address, without for a plain one."""
        direct = isinstance(addr, _Direct)
        key = tuple(addr)
        with self._lock:
            pool = self._rconns if direct else self._conns
            c = pool.get(key)
            if c is None:
                c = Connection(key[0], key[1], self.timeout,
                               prelude=(("CLIENT.REDIRECT", "ON"),) if direct else ())
                c.check_before_send = True
                pool[key] = c
            return c

    def _attempt(self, addr, args, deadline, first):
        """One try of args at addr; the reply or the error as a value."""
        if first:
            t = self.timeout
        else:
            t = min(self.timeout, max(deadline - time.monotonic(), MIN_ATTEMPT_TIMEOUT))
        try:
            return self._conn_for(addr).call(*args, timeout=t)
        except KeelError as e:
            if e.code == "CONNECTION":
                with self._lock:
                    self._suspect[addr] = time.monotonic()
            return e

    @staticmethod
    def _pick(addrs, idx, suspect):
        """The index to use: idx, or the next address not suspect (failed
        within SUSPECT_SECONDS) when idx is suspect and another is not."""
        now = time.monotonic()
        for i in range(len(addrs)):
            j = (idx + i) % len(addrs)
            t = suspect.get(addrs[j])
            if t is None or now - t >= SUSPECT_SECONDS:
                return j
        return idx % len(addrs)

    def _current(self, which):
        with self._lock:
            addrs = self._coords if which == "coord" else self._daemons
            if not addrs:
                return None
            idx = self._pick(addrs, self._cidx if which == "coord" else self._didx,
                             self._suspect)
            if which == "coord":
                self._cidx = idx
            else:
                self._didx = idx
            return addrs[idx]

    def _advance(self, which, addr):
        """Moves past addr if it is still the current one."""
        with self._lock:
            addrs = self._coords if which == "coord" else self._daemons
            if which == "coord":
                if addrs and addrs[self._cidx % len(addrs)] == addr:
                    self._cidx = (self._cidx + 1) % len(addrs)
            elif addrs and addrs[self._didx % len(addrs)] == addr:
                self._didx = (self._didx + 1) % len(addrs)

    def _is_suspect(self, addr):
        with self._lock:
            t = self._suspect.get(addr)
            return t is not None and time.monotonic() - t < SUSPECT_SECONDS

    def _redirect(self, addr):
        """Makes addr (a coordinator named as leader) the current one."""
        with self._lock:
            if addr not in self._coords:
                self._coords.append(addr)
            self._cidx = self._coords.index(addr)

    @staticmethod
    def _backoff(addr, tried, delay, deadline):
        """Waits before the next attempt: not at all if addr was not tried in
        this call, else delay (at most until the deadline). Returns the next
        delay, or None when the deadline has passed."""
        now = time.monotonic()
        if now >= deadline:
            return None
        if addr is not None and addr not in tried:
            return delay
        time.sleep(min(delay, deadline - now))
        return min(delay * 2, BACKOFF_MAX)

    def _coord_call(self, args, deadline, first=False, one_pass=False):
        """args to the coordinators, failing over between them. With
        one_pass, gives up instead of going back to a coordinator already
        tried."""
        if not self._coords:
            err = self._learn_coords_from_daemons(deadline)
            if err is not None:
                return err
        if not first and time.monotonic() >= deadline:
            return KeelError("CONNECTION", "no time left to ask a coordinator", unsent=True)
        tried = set()
        delay = BACKOFF_FIRST
        while True:
            addr = self._current("coord")
            r = self._attempt(addr, args, deadline, first)
            first = False
            tried.add(addr)
            if not isinstance(r, KeelError):
                return r
            leader = _leader_of(r.message) if r.code == "TRYAGAIN" else None
            if leader is not None and leader != addr and not self._is_suspect(leader):
                self._redirect(leader)
            elif r.code in ("CONNECTION", "TRYAGAIN", "NOQUORUM"):
                self._advance("coord", addr)
            else:
                return r
            nxt = self._current("coord")
            if one_pass and nxt in tried:
                return r
            delay = self._backoff(nxt, tried, delay, deadline)
            if delay is None:
                return r

    def _learn_coords_from_daemons(self, deadline):
        """Asks the daemons known (the address given first) INFO lease for
        the coordinators' addresses. None when learnt, else the error."""
        with self._lock:
            daemons = [self._seed] + [d for d in self._daemons if d != self._seed]
        err = KeelError("CONNECTION", "no coordinator known", unsent=True)
        for addr in daemons:
            r = self._attempt(addr, ("INFO", "lease"), deadline, False)
            if isinstance(r, KeelError):
                err = r
                continue
            if not isinstance(r, bytes):
                continue
            fields = _info_fields(_text(r))
            coords = []
            for a in [fields.get("coordinator", "")] + fields.get("coordinators", "").split(","):
                a = _parse_addr(a)
                if a is not None and a not in coords:
                    coords.append(a)
            if coords:
                with self._lock:
                    if not self._coords:
                        self._coords = coords
                        self._cidx = 0
                return None
        return KeelError(err.code, "cannot find a coordinator through the daemons: %s"
                         % err.message)

    def _refresh(self, deadline):
        """Replaces the coordinator and daemon lists with CLUSTER.STATUS,
        asking each coordinator at most once. None when done, else the error
        (the lists are then kept)."""
        r = self._coord_call(("CLUSTER.STATUS",), deadline, one_pass=True)
        if isinstance(r, KeelError):
            return r
        try:
            st = json.loads(_text(r))
            coords, daemons, has_leader = [], [], False
            for c in st.get("coordinators", []):
                a = _parse_addr(c.get("address", ""))
                if a is None:
                    continue
                if c.get("role") == "leader" and not has_leader:
                    coords.insert(0, a)
                    has_leader = True
                else:
                    coords.append(a)
            for d in st.get("daemons", []):
                a = _parse_addr(d.get("address", ""))
                if a is not None and d.get("state") == "ONLINE":
                    daemons.append(a)
        except (ValueError, TypeError, AttributeError):
            return KeelError("CONNECTION", "unexpected reply: CLUSTER.STATUS answered %s"
                             % repr(r)[:200])
        with self._lock:
            if coords:
                # Administration goes to the leader first (followers forward).
                cur = self._coords[self._cidx % len(self._coords)] if self._coords else None
                self._coords = coords
                self._cidx = coords.index(cur) if cur in coords and not has_leader else 0
            cur = self._daemons[self._didx % len(self._daemons)] if self._daemons else None
            if self._mode == "daemon" and self._seed in daemons:
                daemons.remove(self._seed)
                daemons.insert(0, self._seed)
            if cur in daemons:
                idx = daemons.index(cur)
            elif daemons and not self._daemons_known and self._mode == "coordinator":
                idx = random.randrange(len(daemons))  # spread clients over daemons
            else:
                idx = 0
            self._daemons = daemons
            self._didx = idx
            self._daemons_known = True
        return None

    # -- direct routing ------------------------------------------------------

    @staticmethod
    def _route_key(body):
        """(space, key) as bytes for a single-key data command (routed to its
        partition's primary), else None."""
        if len(body) < 3 or _text(to_bytes(body[0])).upper() not in _KEYED:
            return None
        return to_bytes(body[1]), to_bytes(body[2])

    def _bump(self, name, n=1):
        with self._lock:
            self._stats[name] += n

    def _fetch_routes(self, deadline, source=None):
        """Asks for a routing table: CLUSTER.ROUTES to the daemon source
        (whose map is newer than the table held), else (or when that fails)
        to the coordinators (linearizable, the leader first). Keeps the
        newer of the table held and the one received. True when a table was
        received; after a failure no fetch is made for ROUTES_RETRY_SECONDS
        (ROUTES_UNSUPPORTED_SECONDS after an error reply such as an unknown
        command)."""
        r = None
        if source is not None:
            r = self._attempt(tuple(source), ("CLUSTER.ROUTES",), deadline, False)
        if r is None or isinstance(r, KeelError):
            r = self._coord_call(("CLUSTER.ROUTES",), deadline, one_pass=True)
        now = time.monotonic()
        if not isinstance(r, KeelError):
            try:
                table = Routes.parse(r)
            except ValueError as e:
                r = KeelError("CONNECTION", "unexpected reply: %s" % e)
        if isinstance(r, KeelError):
            with self._lock:
                self._stats["route_fetch_failures"] += 1
                if r.code in ("CONNECTION", "TRYAGAIN", "NOQUORUM"):
                    self._routes_next = now + ROUTES_RETRY_SECONDS
                else:
                    self._routes_next = now + ROUTES_UNSUPPORTED_SECONDS
            return False
        with self._lock:
            self._stats["route_fetches"] += 1
            if self._routes is None or table.version >= self._routes.version:
                self._routes = table
            self._routes_at = now
            self._routes_next = 0.0
        return True

    def _routes_due(self):
        """Whether a table may be fetched now for a key the table held
        cannot place: not within ROUTES_STALE_SECONDS of the last one
        received, nor while fetches are held off after a failure."""
        now = time.monotonic()
        with self._lock:
            at, nxt = self._routes_at, self._routes_next
        return now >= nxt and (at is None or now - at >= ROUTES_STALE_SECONDS)

    def _target(self, route, moved, avoid=None, hint=None):
        """Where the next attempt goes: a _Direct address (the key's primary
        by the routing table, or hint when the table still names avoid, the
        daemon that just answered MOVED) unless the call is not routed, has
        had MOVED_LIMIT MOVED replies, the table has no ONLINE primary for
        the key, or the primary failed within SUSPECT_SECONDS; else the
        current daemon of the list (which forwards), or None."""
        if route is not None and moved < MOVED_LIMIT:
            with self._lock:
                table = self._routes
            addr = table.primary(*route) if table is not None else None
            if addr is not None and addr == avoid and hint is not None:
                addr = hint
            if addr is not None and not self._is_suspect(addr):
                return _Direct(addr)
        return self._current("daemon")

    # -- data commands ------------------------------------------------------

    def _data_call(self, args, body):
        """A data command to the daemons, retried by the rules in the module
        documentation. args is what is sent; body is the command itself
        (args without a SEQ prefix). A single-key command goes straight to
        its partition's primary while the routing table names one."""
        deadline = time.monotonic() + self.retry_timeout
        why = None  # why the daemon list could not be refreshed
        if self._mode == "coordinator" and not self._daemons_known:
            why = self._refresh(deadline)
        route = self._route_key(body) if self.retry_timeout > 0 else None
        if route is not None and self._routes is None and \
                time.monotonic() >= self._routes_next:
            # The first table: bounded like discovery.
            self._fetch_routes(time.monotonic() + DISCOVERY_SECONDS)
        tried = set()
        delay = BACKOFF_FIRST
        first = True
        space_known = False
        moved = 0                # MOVED replies in this call
        avoid = hint = None      # after a MOVED: who answered it, whom it named
        while True:
            addr = self._target(route, moved, avoid, hint)
            if (route is not None and moved < MOVED_LIMIT and not isinstance(addr, _Direct)
                    and self._routes_due()):
                # The table cannot place the key (a space it does not know,
                # no ONLINE primary, a primary that just failed): it may be
                # stale, e.g. after a failover.
                self._fetch_routes(deadline)
                addr = self._target(route, moved, avoid, hint)
            if addr is None:
                r = KeelError("CONNECTION", "no ONLINE daemon is known" +
                              (" (the coordinators answered: %s)" % why if why else ""),
                              unsent=True)
            else:
                if isinstance(addr, _Direct):
                    self._bump("direct")
                elif route is not None:
                    self._bump("forwarded")
                r = self._attempt(addr, args, deadline, first)
                first = False
                tried.add(addr)
                if not isinstance(r, KeelError):
                    return r
            avoid = hint = None
            mv = None
            if r.code == "MOVED":
                # Sent with CLIENT.REDIRECT ON to a daemon that does not lead
                # the partition (by its map): nothing was applied.
                moved += 1
                self._bump("moved")
                if moved == MOVED_LIMIT:
                    self._bump("fallbacks")
                mv = _parse_moved(r.message)
                retry = True
            elif r.code in ("CONNECTION", "TRYAGAIN", "NOQUORUM"):
                # Reads have no effect; writes carry SEQ (exactly once).
                retry = True
            elif r.code == "NOSPACE" and len(body) > 1:
                # A daemon answers NOSPACE for a space it has not heard of
                # yet; the coordinators know better. Nothing was applied.
                space_known = space_known or self._space_exists(body[1], deadline)
                retry = space_known
            else:
                retry = False
            if not retry or time.monotonic() >= deadline:
                return r
            if r.code == "MOVED":
                # The table held is stale, or the daemon's map is. A daemon
                # with a newer map gives its table; otherwise the
                # coordinators decide (linearizable).
                with self._lock:
                    held = self._routes.version if self._routes is not None else 0
                newer = mv is not None and mv[2] > held
                self._fetch_routes(deadline, tuple(addr) if newer else None)
                avoid, hint = tuple(addr), (mv[1] if mv is not None else None)
            else:
                if addr is not None:
                    self._advance("daemon", addr)
                why = self._refresh(deadline)
                if route is not None and time.monotonic() >= self._routes_next:
                    # A primary may have failed over: learn the new one.
                    self._fetch_routes(deadline)
            delay = self._backoff(self._target(route, moved, avoid, hint), tried, delay,
                                  deadline)
            if delay is None:
                return r

    def _space_exists(self, space, deadline):
        r = self._coord_call(("SPACE.DESCRIBE", space), deadline)
        return isinstance(r, bytes)


class Client(_Base):
    """Data operations on spaces. See the module documentation."""

    def __init__(self, host="127.0.0.1", port=2012, timeout=10.0,
                 retry_timeout=RETRY_TIMEOUT):
        super().__init__(host, port, timeout, retry_timeout)
        self._schemas = {}

    # -- schema cache -------------------------------------------------------

    def _schema(self, space, refresh=False):
        key = to_bytes(space)
        if refresh or key not in self._schemas:
            r = self.execute("SPACE.DESCRIBE", space)
            _expect(isinstance(r, bytes), "SPACE.DESCRIBE answered %r" % (r,))
            self._schemas[key] = _Schema(*parse_description(_text(r)))
        return self._schemas[key]

    def _decode_value(self, schema, name, value):
        """Decodes one attribute value by the schema; raises LookupError when
        the value does not fit what the schema says (a stale cache)."""
        t = schema.types.get(name)
        if t is None:
            raise LookupError(name)
        if isinstance(value, int):
            if t != "int":
                raise LookupError(name)
            return value
        if not isinstance(value, bytes) or t == "int":
            raise LookupError(name)
        if t == "float":
            try:
                return float(value)
            except ValueError:
                raise LookupError(name) from None
        return _text(value)

    def _decode_pairs(self, space, flat, skip_key):
        """Turns a flat [name, value, ...] reply into a dict. With skip_key,
        the first pair is the key under the key name and is kept as str."""
        _expect(isinstance(flat, list) and len(flat) % 2 == 0,
                "object reply %r" % (flat,))
        for i in range(0, len(flat), 2):
            _expect(isinstance(flat[i], bytes), "attribute name %r" % (flat[i],))
        for attempt in (0, 1):
            schema = self._schema(space, refresh=attempt == 1)
            out = {}
            try:
                for i in range(0, len(flat), 2):
                    name = _text(flat[i])
                    if skip_key and i == 0:
                        _expect(isinstance(flat[1], bytes), "key %r" % (flat[1],))
                        out[name] = _text(flat[1])
                    else:
                        out[name] = self._decode_value(schema, name, flat[i + 1])
                return out
            except LookupError as e:
                if attempt == 1:
                    raise KeelError("CONNECTION", "reply does not fit the schema of "
                                    "space %r (attribute %r)" % (space, str(e))) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _pairs(attrs):
        args = []
        for name, value in attrs.items():
            args.append(name)
            args.append(value)
        return args

    # -- data operations ----------------------------------------------------

    def put(self, space, key, attrs=None):
        """Creates the object or updates only the attributes given."""
        return self._ok("PUT", space, key, *self._pairs(attrs or {}))

    def get(self, space, key):
        """The object as {attr: value}, or None if it does not exist."""
        r = self.execute("GET", space, key)
        if r is None:
            return None
        return self._decode_pairs(space, r, skip_key=False)

    def delete(self, space, key):
        """True if the object existed."""
        r = self.execute("DEL", space, key)
        _expect(r in (0, 1) and not isinstance(r, bool), "DEL answered %r" % (r,))
        return r == 1

    def cond_put(self, space, key, condition, attrs):
        """Writes attrs only if every attribute in condition has the given
        value. True if applied, False if the condition did not hold
        (CMPFAIL). Raises KeelError 'NOTFOUND' if the object does not exist."""
        args = ["CPUT", space, key, "IF"] + self._pairs(condition) + ["SET"] + self._pairs(attrs)
        r = self._call(args)
        if isinstance(r, KeelError) and r.code == "CMPFAIL":
            return False
        r = _check(r)
        _expect(isinstance(r, Status) and r == "OK", "CPUT answered %r" % (r,))
        return True

    def atomic_add(self, space, key, deltas):
        """Adds each delta to its int attribute (one atomic ADD per
        attribute, in the order given; not atomic across attributes).
        Returns {attr: new value}."""
        out = {}
        for name, delta in deltas.items():
            r = self.execute("ADD", space, key, name, delta)
            _expect(isinstance(r, int), "ADD answered %r" % (r,))
            out[name] = r
        return out

    @staticmethod
    def _predicates(predicates):
        args = []
        for name, cond in (predicates or {}).items():
            conds = cond if isinstance(cond, list) else [cond]
            for c in conds:
                if isinstance(c, tuple):
                    if len(c) != 2 or c[0] not in OPS:
                        raise ValueError("predicate on %r must be (op, value) with op in %s"
                                         % (name, ", ".join(OPS)))
                    op, value = c
                else:
                    op, value = "=", c
                args += [name, op, value]
        return args

    def search(self, space, predicates=None, limit=None):
        """Objects matching every predicate, each a dict that includes the
        key under the space's key name. predicates maps an attribute to a
        value (equality), to (op, value) with op in '=', '<', '<=', '>',
        '>=', or to a list of such tuples (e.g. a range)."""
        args = ["SEARCH", space] + self._predicates(predicates)
        if limit is not None:
            args += ["LIMIT", int(limit)]
        r = self.execute(*args)
        _expect(isinstance(r, list), "SEARCH answered %r" % (r,))
        return [self._decode_pairs(space, o, skip_key=True) for o in r]

    def count(self, space, predicates=None):
        """Number of objects matching every predicate (as for search)."""
        r = self.execute("COUNT", space, *self._predicates(predicates))
        _expect(isinstance(r, int), "COUNT answered %r" % (r,))
        return r


class Admin(_Base):
    """Space and cluster administration."""

    def add_space(self, description):
        """Creates a space from its description in the space language."""
        return self._ok("SPACE.ADD", description)

    def rm_space(self, name):
        """Removes a space and all its objects."""
        return self._ok("SPACE.DROP", name)

    def list_spaces(self):
        """Space names, in creation order."""
        r = self.execute("SPACE.LIST")
        _expect(isinstance(r, list) and all(isinstance(x, bytes) for x in r),
                "SPACE.LIST answered %r" % (r,))
        return [_text(x) for x in r]

    def describe_space(self, name):
        """The canonical description of a space."""
        r = self.execute("SPACE.DESCRIBE", name)
        _expect(isinstance(r, bytes), "SPACE.DESCRIBE answered %r" % (r,))
        return _text(r)

    def config_get(self, name):
        r = self.execute("CLUSTER.CONFIG", "GET", name)
        _expect(isinstance(r, bytes), "CLUSTER.CONFIG GET answered %r" % (r,))
        return _text(r)

    def config_set(self, name, value):
        return self._ok("CLUSTER.CONFIG", "SET", name, value)

    def cluster_status(self):
        """CLUSTER.STATUS as a dict (coordinators, daemons, spaces,
        settings; see docs/coordinator.md). Clusters only."""
        r = self.execute("CLUSTER.STATUS")
        _expect(isinstance(r, bytes), "CLUSTER.STATUS answered %r" % (r,))
        try:
            st = json.loads(_text(r))
        except ValueError:
            st = None
        _expect(isinstance(st, dict), "CLUSTER.STATUS answered %r" % (r[:200],))
        return st
