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
               CLUSTER.STATUS, the leader first; data commands (PUT GET DEL
               CPUT ADD SEARCH COUNT) go to a daemon listed ONLINE there (each
               client starts at a random one). Any daemon forwards a request to
               its partition's primary.
  daemon       data commands go to that daemon while it works; the
               coordinators are learnt from its INFO (# Lease section), and the
               other daemons from CLUSTER.STATUS when it fails.

PING, ECHO, INFO and QUIT always go to the address given.

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
daemon list is refreshed from a coordinator before every retry. Which errors
are retried depends on the command:

  administration     connection errors, TRYAGAIN (to the coordinator named in
                     "leader is host:port", else the next) and NOQUORUM.
                     add_space and rm_space are retried too: if a first attempt
                     was applied but its answer lost, the retry answers ERR
                     (the space exists) or NOSPACE.
  data commands      connection errors (before or after the request was
                     sent, timeouts included), TRYAGAIN and NOQUORUM, on the
                     next ONLINE daemon. Reads are side-effect free and
                     writes are exactly-once (above), so a retried write is
                     answered as its first attempt was (a delete that was
                     applied answers True, an atomic_add the one sum). ERR
                     stale request (a later write of this client id was
                     already accepted on the partition) is raised.
  any data command   NOSPACE from a daemon while the coordinators know the
                     space (its map is behind, e.g. just after add_space):
                     retried; nothing was applied.

UNAVAILABLE (a partition with no live replica) and every other error are
raised at once; when retries run out the last error is raised. A retry gets
at most the time left (at least 0.1 s) as its timeout; retry_timeout=0
disables retries. Direct routing to primaries (CLUSTER.MAP) is not done: the
daemons forward.

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
     coordinators (to learn addresses).
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

__all__ = ["Client", "Admin", "KeelError", "OPS", "RETRY_TIMEOUT", "parse_description"]

OPS = ("=", "<", "<=", ">", ">=")

RETRY_TIMEOUT = 15.0         # default bound on one call's retries, seconds
BACKOFF_FIRST = 0.05         # first wait before asking a server again
BACKOFF_MAX = 0.5            # the wait doubles up to this
MIN_ATTEMPT_TIMEOUT = 0.1    # a retry gets at least this long to answer
SUSPECT_SECONDS = 2.0        # an address that failed is avoided this long
DISCOVERY_SECONDS = 2.0      # bound on learning the cluster on first use

# Data commands (see the module documentation): reads, writes (sent as SEQ
# on a cluster), and SEQ itself (a write the caller already numbered).
_DATA_KINDS = {"GET": "read", "SEARCH": "read", "COUNT": "read",
               "PUT": "write", "DEL": "write", "ADD": "write", "CPUT": "write",
               "SEQ": "seq"}
MAX_CLIENT_ID = (1 << 63) - 1
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

    def close(self):
        """Closes every connection (a later call opens new ones)."""
        with self._lock:
            conns = list(self._conns.values())
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
        with self._lock:
            c = self._conns.get(addr)
            if c is None:
                c = Connection(addr[0], addr[1], self.timeout)
                c.check_before_send = True
                self._conns[addr] = c
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

    def _data_call(self, args, body):
        """A data command to the daemons, retried by the rules in the module
        documentation. args is what is sent; body is the command itself
        (args without a SEQ prefix)."""
        deadline = time.monotonic() + self.retry_timeout
        why = None  # why the daemon list could not be refreshed
        if self._mode == "coordinator" and not self._daemons_known:
            why = self._refresh(deadline)
        tried = set()
        delay = BACKOFF_FIRST
        first = True
        space_known = False
        while True:
            addr = self._current("daemon")
            if addr is None:
                r = KeelError("CONNECTION", "no ONLINE daemon is known" +
                              (" (the coordinators answered: %s)" % why if why else ""),
                              unsent=True)
            else:
                r = self._attempt(addr, args, deadline, first)
                first = False
                tried.add(addr)
                if not isinstance(r, KeelError):
                    return r
            if r.code in ("CONNECTION", "TRYAGAIN", "NOQUORUM"):
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
            if addr is not None:
                self._advance("daemon", addr)
            why = self._refresh(deadline)
            delay = self._backoff(self._current("daemon"), tried, delay, deadline)
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
