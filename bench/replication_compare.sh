#!/usr/bin/env bash
# bench/replication_compare.sh — keel's replicated data path and Redis
# primary + replica, side by side, in one run; then failover and tail-replay
# times (bench/failover_times.py).
#
# What it measures:
#   1. Replicated writes: a `keel local -c 1 -d 2` cluster with a space of 8
#      partitions and `tolerate 1 failures` (2 copies of everything; the
#      daemons' default --sync batch) against two redis-server
#      processes (primary + `replicaof` replica, both appendonly everysec)
#      where every request is `SET key value` followed by `WAIT 1 0`, so it
#      is acknowledged only once the replica has it. The client is
#      bench/redis_wait.c (redis-benchmark cannot send SET+WAIT as one
#      request), built into the temp dir: CLIENTS logical clients, pipeline 1
#      (one request outstanding per client), DATA-byte values, random keys
#      over KEYSPACE.
#      keel is addressed the way a smart client does (ROUTED=1, the default):
#      redis_wait -R fetches CLUSTER.ROUTES from the coordinator once, each
#      client opens one connection per primary daemon with CLIENT.REDIRECT
#      ON, and sends every request to its key's partition's primary (so keel
#      has 2 x CLIENTS sockets, Redis CLIENTS). A -MOVED reply is an error,
#      which fails the script, so a finished run sent nothing to a
#      non-primary. With ROUTED=0 the clients' single connections are spread
#      over both daemons instead, and a daemon forwards a key whose primary
#      is the other one (one extra hop for about half the requests): the
#      forwarding path, as a client without routing sees it.
#   2. fsync on every write: if `keel daemon --help` offers `--sync always`,
#      a coordinator and 2 daemons started one by one with --sync always
#      (keel local passes no daemon flags) against the Redis pair with
#      appendfsync always on both; PUT vs SET+WAIT only. Otherwise skipped.
#   3. Reads: keel GET (routed to the primaries, or with ROUTED=0 through
#      any daemon) against Redis GET on the primary, same client, after both
#      were preloaded with every key (the keel preload is routed the same way).
#   4. With FAILOVER=1 (default), bench/failover_times.py on its own cluster:
#      kill -9 / SIGSTOP of a primary -> first acknowledged write on its
#      partition, with ping_timeout 3000 and 1000 ms; and the tail-replay rate
#      of a daemon that returns after missed writes.
#
# Method (docs/BENCHMARKS.md, section Replication, has the write-up): for each
# test and each repetition r = 1..R, keel and Redis run back to back, keel
# first on odd r; each cell is the median over R runs. A run during which
# other processes used more than MAX_OTHER % of the cores is discarded and
# repeated (at most RETRIES times), as in bench/redis_compare.sh.
#
# Invariants:
#   1. Every process the script starts is recorded by pid and stopped (TERM,
#      then KILL) on every exit path; nothing is killed by name. keel local
#      stops its own children (and they get SIGTERM if it dies).
#   2. Every external wait is bounded: server and cluster start, replica
#      link, each client run (RUN_TIMEOUT), failover_times.py (FO_TIMEOUT).
#   3. The keel binary is copied into the temp dir first, so a rebuild of
#      build/keel during the run does not change what is measured.
#   4. The exit status is 0 when every step ran, whatever the ratios are;
#      nonzero when something failed to start or died, a client run reported
#      an error reply or timed out, a sanity check failed, or output could
#      not be parsed.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/replication_compare.sh [--quick] [--keep]

  --quick       short smoke run (same as QUICK=1)
  --keep        keep the temp dir (data, logs) and print its path

environment (defaults in brackets; QUICK=1 changes the defaults shown second):
  R            repetitions of each measurement, median reported   [3 | 1]
  N_PUT        requests per write run                             [100000 | 20000]
  N_GET        requests per read run                              [200000 | 40000]
  N_ALWAYS     requests per write run of the fsync-always pair     [20000 | 5000]
  CLIENTS      logical clients, one request outstanding on each   [50]
  ROUTED       1: keel requests go straight to the partition's primary
               (redis_wait -R, CLIENT.REDIRECT ON, -MOVED fails the run);
               0: spread over the daemons, which forward (one extra hop
               for about half the requests)                       [1]
  KEYSPACE     random keys over this many; also the preload       [100000]
  DATA         value size in bytes                                [100]
  KEEL         keel binary, e.g. KEEL=build/bench/keel            [<repo>/build/keel]
  RUN_TIMEOUT  seconds allowed for one client run                 [600]
  FAILOVER     1: also run bench/failover_times.py                [1]
  FO_TRIALS    failover trials per scenario                       [7 | 1]
  TAIL_TRIALS  tail-replay trials (each with a no-write baseline) [3 | 1]
  TAIL_N       writes missed by the returning daemon              [200000 | 50000]
  FO_TIMEOUT   seconds allowed for failover_times.py              [1500]
  QUIET_WAIT   before each run, wait up to this many seconds for the host
               to be quiet (CPU busy below QUIET_BUSY % of all cores) [0]
  QUIET_BUSY   the busy threshold for QUIET_WAIT, percent          [25]
  MAX_OTHER    a run during which other processes used more than this
               percent of all cores is discarded and repeated      [25]
  RETRIES      at most this many repeats per measurement           [2]
  TMPDIR       where the temp dir is made (its filesystem matters for fsync)
EOF
}

# ---------------------------------------------------------------- settings --

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=${QUICK:-0}
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "replication_compare: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    R=${R:-1}; N_PUT=${N_PUT:-20000}; N_GET=${N_GET:-40000}; N_ALWAYS=${N_ALWAYS:-5000}
    FO_TRIALS=${FO_TRIALS:-1}; TAIL_TRIALS=${TAIL_TRIALS:-1}; TAIL_N=${TAIL_N:-50000}
else
    R=${R:-3}; N_PUT=${N_PUT:-100000}; N_GET=${N_GET:-200000}; N_ALWAYS=${N_ALWAYS:-20000}
    FO_TRIALS=${FO_TRIALS:-7}; TAIL_TRIALS=${TAIL_TRIALS:-3}; TAIL_N=${TAIL_N:-200000}
fi
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
DATA=${DATA:-100}
KEEL=${KEEL:-$REPO/build/keel}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
FAILOVER=${FAILOVER:-1}
ROUTED=${ROUTED:-1}
FO_TIMEOUT=${FO_TIMEOUT:-1500}
MAX_OTHER=${MAX_OTHER:-25}
RETRIES=${RETRIES:-2}
QUIET_WAIT=${QUIET_WAIT:-0}
QUIET_BUSY=${QUIET_BUSY:-25}

for v in R N_PUT N_GET N_ALWAYS CLIENTS KEYSPACE DATA RUN_TIMEOUT FO_TRIALS TAIL_N FO_TIMEOUT QUIET_BUSY MAX_OTHER; do
    val=${!v}
    case "$val" in
        ''|*[!0-9]*|0) echo "replication_compare: $v must be a positive integer (got '$val')" >&2; exit 2 ;;
    esac
done
for v in QUIET_WAIT RETRIES TAIL_TRIALS; do
    case "${!v}" in
        ''|*[!0-9]*) echo "replication_compare: $v must be a non-negative integer (got '${!v}')" >&2; exit 2 ;;
    esac
done
case "$FAILOVER" in 0|1) ;; *) echo "replication_compare: FAILOVER must be 0 or 1" >&2; exit 2 ;; esac
case "$ROUTED" in 0|1) ;; *) echo "replication_compare: ROUTED must be 0 or 1" >&2; exit 2 ;; esac

# ------------------------------------------------------------ prerequisites --

missing=""
for tool in redis-server:redis-server redis-cli:redis-tools cc:gcc timeout:coreutils \
            awk:mawk /usr/bin/python3:python3; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool#*:}"
done
# bench/redis_wait.c includes <xxhash.h> (header-only, for the key's partition)
echo '#include <xxhash.h>' | cc -E -x c - >/dev/null 2>&1 || missing="$missing libxxhash-dev"
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
    echo "replication_compare: missing tools; install with: sudo apt-get install -y $missing" >&2
    exit 2
fi
if [ ! -x "$KEEL" ]; then
    echo "replication_compare: keel binary '$KEEL' not found; build it with: make -j2 all" >&2
    exit 2
fi

# ------------------------------------------------- process and temp cleanup --

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-repl-bench.XXXXXX")
PIDS=""            # every live process this script started, by pid

forget_pid() {
    local p out=""
    for p in $PIDS; do [ "$p" = "$1" ] || out="$out $p"; done
    PIDS=$out
}

stop_pid() {       # stop_pid PID [SECONDS]: TERM, wait (default 10 s), then KILL; reap
    local pid=$1 secs=${2:-10}
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 $((secs * 10))); do
            kill -0 "$pid" 2>/dev/null || break
            if [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ]; then break; fi
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; then
            echo "replication_compare: pid $pid still running after ${secs}s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in $PIDS; do
        if [ "$p" = "${LOCAL_PID:-}" ]; then stop_pid "$p" 40; else stop_pid "$p"; fi
    done
    if [ "$KEEP" = 1 ]; then
        echo "replication_compare: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "replication_compare: interrupted" >&2; exit 130' INT TERM

fail() { echo "replication_compare: FAILED: $*" >&2; exit 1; }

# run_bg IN OUT ERR CMD...: CMD in the background, bounded by RUN_TIMEOUT, and
# waited for (so INT/TERM reach the trap at once); returns CMD's status
run_bg() {
    local in=$1 out=$2 err=$3 bpid rc=0
    shift 3
    timeout "$RUN_TIMEOUT" "$@" <"$in" >"$out" 2>"$err" &
    bpid=$!
    PIDS="$PIDS $bpid"
    wait "$bpid" || rc=$?
    forget_pid "$bpid"
    return "$rc"
}

# ------------------------------------------------------------ the client --

CLIENT="$WORK/redis_wait"
cc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror -o "$CLIENT" "$REPO/bench/redis_wait.c" \
    || fail "could not build bench/redis_wait.c"
KEEL_BIN="$WORK/keel"
cp "$KEEL" "$KEEL_BIN"

# -------------------------------------------------------------- the servers --

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {      # pick_port SPAN: P with P..P+SPAN-1 and P+10000.. free, below the ephemeral range
    local span=$1 lo p i ok
    lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$lo" -gt 30200 ] 2>/dev/null || lo=32768
    for _ in $(seq 1 200); do
        p=$(( 12000 + (RANDOM * 32768 + RANDOM) % (lo - 10000 - 12000 - span) ))
        ok=1
        for i in $(seq 0 $((span - 1))); do
            port_free $((p + i)) && port_free $((p + i + 10000)) || { ok=0; break; }
        done
        [ "$ok" = 1 ] && { echo "$p"; return 0; }
    done
    return 1
}

wait_ready() {     # wait_ready PID PORT: up to 10 s for PONG while PID lives
    local pid=$1 port=$2
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [ "$(timeout 2 redis-cli -p "$port" PING 2>/dev/null)" = PONG ]; then
            kill -0 "$pid" 2>/dev/null && return 0
            return 1
        fi
        sleep 0.1
    done
    return 1
}

alive_or_fail() {  # alive_or_fail NAME PID LOG
    kill -0 "$2" 2>/dev/null && [ "$(ps -o stat= -p "$2" 2>/dev/null | cut -c1)" != Z ] && return 0
    echo "replication_compare: $1 (pid $2) died; last log lines:" >&2
    tail -n 20 "$3" >&2 || true
    fail "$1 died during the benchmark"
}

# start_keel: `keel local -c 1 -d 2`; sets LOCAL_PID COORD_PORT D1_PORT D2_PORT KEEL_DIR
start_keel() {
    local attempt cport dport dir pid
    for attempt in 1 2 3; do
        cport=$(pick_port 1) || fail "no free port"
        dport=$(pick_port 2) || fail "no free port"
        dir="$WORK/keel-$attempt"
        "$KEEL_BIN" local -c 1 -d 2 -D "$dir" --base-port "$cport" --daemon-base-port "$dport" \
            >"$WORK/keel-local-$attempt.out" 2>&1 &
        pid=$!
        PIDS="$PIDS $pid"
        for _ in $(seq 1 300); do
            grep -q '^keel local: ready' "$WORK/keel-local-$attempt.out" && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if grep -q '^keel local: ready' "$WORK/keel-local-$attempt.out" && kill -0 "$pid" 2>/dev/null; then
            LOCAL_PID=$pid COORD_PORT=$cport D1_PORT=$dport D2_PORT=$((dport + 1)) KEEL_DIR=$dir
            KEEL_LOG="$WORK/keel-local-$attempt.out"
            return 0
        fi
        stop_pid "$pid" 40
        echo "replication_compare: keel local did not get ready (attempt $attempt):" >&2
        tail -n 8 "$WORK/keel-local-$attempt.out" >&2 || true
    done
    fail "keel local would not start"
}

keel_pids() { echo "$KEEL_SERVER_PIDS"; }   # every keel process of the pair under test

# start_keel_manual SYNC: a coordinator and 2 `keel daemon --sync SYNC`, started
# one by one (keel local passes no daemon flags); sets KEEL_SERVER_PIDS
# COORD_PORT D1_PORT D2_PORT KEEL_DIR KEEL_LOG
start_keel_manual() {
    local sync=$1 cport dport dir pid i pids=""
    cport=$(pick_port 1) || fail "no free port"
    dport=$(pick_port 2) || fail "no free port"
    dir="$WORK/keel-$sync"
    mkdir -p "$dir"
    "$KEEL_BIN" coordinator -f -l 127.0.0.1 -p "$cport" -D "$dir/coordinator" >"$dir/coordinator.log" 2>&1 &
    pid=$!
    PIDS="$PIDS $pid"; pids="$pid"
    wait_ready "$pid" "$cport" || fail "keel coordinator did not start: $(tail -n 5 "$dir/coordinator.log")"
    for i in 0 1; do
        "$KEEL_BIN" daemon -f --listen=127.0.0.1 --listen-port=$((dport + i)) --coordinator=127.0.0.1 \
            --coordinator-port="$cport" --data="$dir/daemon-$i" --sync "$sync" >"$dir/daemon-$i.log" 2>&1 &
        pid=$!
        PIDS="$PIDS $pid"; pids="$pids $pid"
        wait_ready "$pid" $((dport + i)) || fail "keel daemon did not start: $(tail -n 5 "$dir/daemon-$i.log")"
    done
    KEEL_SERVER_PIDS=$pids COORD_PORT=$cport D1_PORT=$dport D2_PORT=$((dport + 1)) KEEL_DIR=$dir
    KEEL_LOG="$dir/daemon-0.log"
    wait_until 30 "both keel daemons ONLINE" two_online
}
two_online() {
    [ "$(timeout 5 redis-cli -p "$COORD_PORT" CLUSTER.STATUS | grep -o '"state":"ONLINE"' | wc -l)" -eq 2 ]
}

# start_redis ROLE FSYNC [PRIMARY_PORT]: sets RPID RPORT RDIR
start_redis() {
    local role=$1 fsync=$2 primary=${3:-} attempt port dir pid extra=()
    [ -n "$primary" ] && extra=(--replicaof 127.0.0.1 "$primary")
    for attempt in 1 2 3; do
        port=$(pick_port 1) || fail "no free port"
        dir="$WORK/redis-$role-$port"
        mkdir -p "$dir"
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize no \
            --appendonly yes --appendfsync "$fsync" --save '' \
            --logfile "$dir/log" "${extra[@]}" >"$dir/stdout" 2>&1 &
        pid=$!
        PIDS="$PIDS $pid"
        if wait_ready "$pid" "$port"; then
            RPID=$pid RPORT=$port RDIR=$dir
            return 0
        fi
        stop_pid "$pid"
        echo "replication_compare: redis-server ($role) did not start on port $port (attempt $attempt)" >&2
        tail -n 5 "$dir/log" "$dir/stdout" >&2 || true
    done
    fail "redis-server ($role) would not start"
}

expect() {         # expect WHAT WANT CMD...: redis-cli CMD must print WANT
    local what=$1 want=$2 got
    shift 2
    got=$(timeout 10 redis-cli "$@" 2>&1) || fail "$what: redis-cli failed: $got"
    [ "$got" = "$want" ] || fail "$what: expected '$want', got '$got'"
}

wait_until() {     # wait_until SECONDS WHAT CMD...: until CMD succeeds
    local secs=$1 what=$2 i
    shift 2
    for i in $(seq 1 $((secs * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "timed out after ${secs}s waiting for $what"
}

replica_online() {
    timeout 2 redis-cli -p "$RPRIMARY_PORT" INFO replication | tr -d '\r' \
        | grep -q '^slave0:.*state=online' \
    && timeout 2 redis-cli -p "$RREPLICA_PORT" INFO replication | tr -d '\r' \
        | grep -q '^master_link_status:up'
}

VALUE=$(head -c "$DATA" /dev/zero | tr '\0' x)

keel_serves() {    # both daemons accept a write and read it back
    [ "$(timeout 5 redis-cli -p "$D1_PORT" PUT kv key:000000000000 v "$VALUE")" = OK ] \
    && [ "$(timeout 5 redis-cli -p "$D2_PORT" GET kv key:000000000000)" = "$(printf 'v\n%s' "$VALUE")" ] \
    && [ "$(timeout 5 redis-cli -p "$D2_PORT" PUT kv key:000000000001 v "$VALUE")" = OK ] \
    && [ "$(timeout 5 redis-cli -p "$D1_PORT" GET kv key:000000000001)" = "$(printf 'v\n%s' "$VALUE")" ]
}

keel_protected() {
    timeout 5 redis-cli -p "$COORD_PORT" CLUSTER.STATUS \
        | grep -q '"health":{"PROTECTED":8,"DEGRADED":0,"UNAVAILABLE":0}'
}

# ------------------------------------------------------------ benchmarking --

RESULTS="$WORK/results.tsv"   # label server rep rps p50 p99 before during disturbed
: >"$RESULTS"
RUN_NO=0
DISCARDED=0
FLAGGED=0

proc_ticks() {
    local p t=0 x
    for p in "$@"; do
        x=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || x=0
        t=$((t + ${x:-0}))
    done
    echo "$t"
}
server_pids() { echo "$(keel_pids) $RPRIMARY_PID $RREPLICA_PID"; }
host_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat; }
child_ticks() {    # sets CT: CPU ticks of this shell's reaped children (must not run in $(...))
    times >"$WORK/times"
    CT=$(awk 'NR == 2 { t = 0
             for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] }
             printf "%d\n", t * 100 }' "$WORK/times")
}
other_during() {
    awk -v a="$1" -v b="$2" -v s="$3" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; total = busy + y[2] - x[2]
        if (total <= 0) { print 0; exit }
        o = busy - s; if (o < 0) o = 0
        printf "%.0f\n", 100 * o / total }'
}
cpu_busy() {
    local h0 h1 s0 s1 pids
    pids=$(server_pids)
    # shellcheck disable=SC2086
    h0=$(host_ticks); s0=$(proc_ticks $pids)
    sleep 1
    # shellcheck disable=SC2086
    h1=$(host_ticks); s1=$(proc_ticks $pids)
    BUSY=$(other_during "$h0" "$h1" $((s1 - s0)))
}
quiet() {
    local waited=0
    cpu_busy
    while [ "$waited" -lt "$QUIET_WAIT" ] && [ "$BUSY" -ge "$QUIET_BUSY" ]; do
        cpu_busy
        waited=$((waited + 1))
    done
}

check_alive() {
    local p
    for p in $KEEL_SERVER_PIDS; do alive_or_fail "keel (pid $p)" "$p" "$KEEL_LOG"; done
    alive_or_fail "redis primary" "$RPRIMARY_PID" "$RPRIMARY_DIR/log"
    alive_or_fail "redis replica" "$RREPLICA_PID" "$RREPLICA_DIR/log"
}

# bench LABEL SERVER REP N CLIENT-ARGS...: one measurement with the discard rule
bench() {
    local label=$1 server=$2 rep=$3 n=$4 rc line attempt flag pids route
    shift 4
    for attempt in $(seq 0 "$RETRIES"); do
        RUN_NO=$((RUN_NO + 1))
        local out="$WORK/run-$RUN_NO.out" err="$WORK/run-$RUN_NO.err"
        check_alive
        quiet
        local h0 h1 s0 s1 c0 c1
        pids=$(server_pids)
        child_ticks; c0=$CT
        # shellcheck disable=SC2086
        h0=$(host_ticks); s0=$(proc_ticks $pids)
        rc=0
        run_bg /dev/null "$out" "$err" "$CLIENT" -c "$CLIENTS" -n "$n" -r "$KEYSPACE" -d "$DATA" \
            -T "$RUN_TIMEOUT" "$@" || rc=$?
        # shellcheck disable=SC2086
        h1=$(host_ticks); s1=$(proc_ticks $pids)
        child_ticks; c1=$CT
        DURING=$(other_during "$h0" "$h1" $((s1 - s0 + c1 - c0)))
        if [ "$rc" -ne 0 ]; then
            cat "$out" "$err" >&2
            [ "$rc" -eq 124 ] && fail "$label on $server timed out after ${RUN_TIMEOUT}s"
            fail "$label on $server: the client exited $rc"
        fi
        check_alive
        line=$(sed -n 's/^requests=\([0-9]*\) errors=0 seconds=[0-9.]* rps=\([0-9]*\) p50_ms=\([0-9.]*\) p99_ms=\([0-9.]*\) .*/\2\t\3\t\4/p' "$out")
        case "$line" in
            [0-9]*"	"[0-9]*"	"[0-9]*) ;;
            *) cat "$out" "$err" >&2; fail "$label on $server: could not parse the client's output" ;;
        esac
        route=""
        if [ "$server" = keel ] && [ "$ROUTED" = 1 ]; then
            route=$(sed -n 's/.* routed=1 map_version=\([0-9]*\) per_daemon=\([0-9:,]*\)$/routed by map v\1, requests per daemon id \2/p' "$out")
            [ -n "$route" ] || { cat "$out" "$err" >&2; fail "$label on $server: the client did not report a routed run"; }
        fi
        flag=""
        if [ "$DURING" -gt "$MAX_OTHER" ]; then
            if [ "$attempt" -lt "$RETRIES" ]; then flag="discarded"
            else flag="kept, disturbed"; FLAGGED=$((FLAGGED + 1)); fi
        fi
        printf '  %-5s %-6s rep %d: %8.0f rps  p50 %6s ms  p99 %7s ms  other load: before %3s%%, during %3s%%%s%s\n' \
            "$label" "$server" "$rep" "$(cut -f1 <<<"$line")" "$(cut -f2 <<<"$line")" \
            "$(cut -f3 <<<"$line")" "$BUSY" "$DURING" "${flag:+  ($flag)}" "${route:+  [$route]}"
        if [ "$flag" = discarded ]; then DISCARDED=$((DISCARDED + 1)); continue; fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%d\n' "$label" "$server" "$rep" "$line" "$BUSY" "$DURING" \
            "$([ -n "$flag" ] && echo 1 || echo 0)" >>"$RESULTS"
        return 0
    done
}

KEEL_PORTS=""      # set after start: "D1,D2"
KEEL_TARGET=()     # set after start: where redis_wait sends keel requests

keel_target() {    # sets KEEL_TARGET for the keel cluster just started
    if [ "$ROUTED" = 1 ]; then KEEL_TARGET=(-R "127.0.0.1:$COORD_PORT")
    else KEEL_TARGET=(-p "$KEEL_PORTS"); fi
}

pair() {           # pair LABEL REP N KEEL-ARGS -- REDIS-ARGS
    local label=$1 rep=$2 n=$3 keelargs=() redisargs=() side=keel a
    shift 3
    for a in "$@"; do
        if [ "$a" = -- ] && [ "$side" = keel ]; then side=redis; continue; fi
        if [ "$side" = keel ]; then keelargs+=("$a"); else redisargs+=("$a"); fi
    done
    if [ $((rep % 2)) -eq 1 ]; then
        bench "$label" keel "$rep" "$n" "${KEEL_TARGET[@]}" "${keelargs[@]}"
        bench "$label" redis "$rep" "$n" -p "$RPRIMARY_PORT" "${redisargs[@]}"
    else
        bench "$label" redis "$rep" "$n" -p "$RPRIMARY_PORT" "${redisargs[@]}"
        bench "$label" keel "$rep" "$n" "${KEEL_TARGET[@]}" "${keelargs[@]}"
    fi
}

median() {         # median LABEL SERVER COLUMN(4=rps 5=p50 6=p99)
    awk -F'\t' -v l="$1" -v s="$2" -v c="$3" '$1 == l && $2 == s { print $c }' "$RESULTS" \
        | sort -g \
        | awk '{ a[NR] = $1 } END {
                   if (NR == 0) exit 1
                   if (NR % 2) print a[(NR + 1) / 2]
                   else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
spread() {
    if [ "$R" -lt 2 ]; then echo "-"; return 0; fi
    awk -F'\t' -v l="$1" -v s="$2" -v m="$(median "$1" "$2" 4)" '$1 == l && $2 == s {
            if (n == 0 || $4 < lo) lo = $4
            if (n == 0 || $4 > hi) hi = $4
            n++ }
        END { printf "%.0f%%\n", 100 * (hi - lo) / m }' "$RESULTS"
}
disturbed() {
    awk -F'\t' -v l="$1" -v s="$2" '$1 == l && $2 == s && $9 == 1 { d = 1 } END { if (d) printf "*" }' "$RESULTS"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }

aim() {            # aim LABEL MIN DESCRIPTION: judged on the unrounded ratio
    local kr rr
    kr=$(median "$1" keel 4); rr=$(median "$1" redis 4)
    if awk -v a="$kr" -v b="$rr" -v m="$2" 'BEGIN { exit !(a / b >= m) }'; then
        printf -- '- %s: ratio %s, aim >= %s: **met**\n' "$3" "$(awk -v a="$kr" -v b="$rr" 'BEGIN { printf "%.3f", a / b }')" "$2"
    else
        printf -- '- %s: ratio %s, aim >= %s: **not met**\n' "$3" "$(awk -v a="$kr" -v b="$rr" 'BEGIN { printf "%.3f", a / b }')" "$2"
    fi
}

# -------------------------------------------------------------------- main --

commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "none")
dirty=""
[ -n "$(git -C "$REPO" status --porcelain -- src include Makefile 2>/dev/null)" ] \
    && dirty=" (plus uncommitted or untracked changes under src/ include/ Makefile)"

echo "## keel replicated vs redis primary+replica — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r)"
echo "- keel: $("$KEEL_BIN" version 2>&1 | head -n1), binary $KEEL (sha256 $(sha256sum "$KEEL_BIN" | cut -c1-12), modified $(date -u -r "$KEEL" +%Y-%m-%dT%H:%M:%SZ)); tree at commit $commit$dirty"
echo "- redis: $(redis-server --version | awk '{print $3}' | sed 's/v=//')"
echo "- data dir filesystem: $(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }') ($WORK)"
echo "- load average before start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- settings: R=$R CLIENTS=$CLIENTS KEYSPACE=$KEYSPACE DATA=$DATA N_PUT=$N_PUT N_GET=$N_GET N_ALWAYS=$N_ALWAYS pipeline 1; FO_TRIALS=$FO_TRIALS TAIL_TRIALS=$TAIL_TRIALS TAIL_N=$TAIL_N"
if [ "$ROUTED" = 1 ]; then
    echo "- keel addressing: ROUTED=1, every request sent to its partition's primary (CLUSTER.ROUTES from the coordinator, CLIENT.REDIRECT ON; a -MOVED fails the run)"
else
    echo "- keel addressing: ROUTED=0, connections spread over both daemons, which forward keys they do not lead (one extra hop for about half the requests)"
fi
echo "- noise control: MAX_OTHER=$MAX_OTHER% RETRIES=$RETRIES QUIET_WAIT=${QUIET_WAIT}s QUIET_BUSY=$QUIET_BUSY%"
echo

setup_keel_space() {
    KEEL_PORTS="$D1_PORT,$D2_PORT"
    keel_target
    expect "keel SPACE.ADD" OK -p "$COORD_PORT" SPACE.ADD "space kv key k attributes v create 8 partitions tolerate 1 failures"
    wait_until 30 "both keel daemons to serve the space" keel_serves
    wait_until 30 "every keel partition PROTECTED" keel_protected
}

start_redis_pair() {   # start_redis_pair FSYNC
    start_redis primary "$1"
    RPRIMARY_PID=$RPID RPRIMARY_PORT=$RPORT RPRIMARY_DIR=$RDIR
    start_redis replica "$1" "$RPRIMARY_PORT"
    RREPLICA_PID=$RPID RREPLICA_PORT=$RPORT RREPLICA_DIR=$RDIR
    wait_until 30 "the redis replica link" replica_online
    expect "redis SET" OK -p "$RPRIMARY_PORT" SET key:000000000000 "$VALUE"
    expect "redis WAIT" 1 -p "$RPRIMARY_PORT" WAIT 1 5000
    echo "redis primary pid $RPRIMARY_PID port $RPRIMARY_PORT; replica pid $RREPLICA_PID port $RREPLICA_PORT (appendfsync $1 on both)"
}

start_keel
KEEL_SERVER_PIDS="$LOCAL_PID $(ps -o pid= --ppid "$LOCAL_PID" 2>/dev/null | tr '\n' ' ')"
[ "$(echo "$KEEL_SERVER_PIDS" | wc -w)" -eq 4 ] || fail "keel local should have 3 children: $KEEL_SERVER_PIDS"
setup_keel_space
echo "keel local pid $LOCAL_PID: coordinator 127.0.0.1:$COORD_PORT, daemons 127.0.0.1:$D1_PORT and :$D2_PORT (pids $KEEL_SERVER_PIDS)"
start_redis_pair everysec

# preload every key once on both sides, so every GET hits
t0=$(date +%s.%N)
run_bg /dev/null "$WORK/preload-keel" "$WORK/preload-keel.err" "$CLIENT" -m put -s kv -S \
    "${KEEL_TARGET[@]}" -c "$CLIENTS" -n "$KEYSPACE" -d "$DATA" -T "$RUN_TIMEOUT" \
    || fail "keel preload: $(cat "$WORK/preload-keel" "$WORK/preload-keel.err")"
echo "preloaded $KEYSPACE keys into keel in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"
t0=$(date +%s.%N)
run_bg /dev/null "$WORK/preload-redis" "$WORK/preload-redis.err" "$CLIENT" -m setwait -S \
    -p "$RPRIMARY_PORT" -c "$CLIENTS" -n "$KEYSPACE" -d "$DATA" -T "$RUN_TIMEOUT" \
    || fail "redis preload: $(cat "$WORK/preload-redis" "$WORK/preload-redis.err")"
echo "preloaded $KEYSPACE keys into redis in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"
check_counts() {
    expect "keel COUNT kv via daemon 1" "$KEYSPACE" -p "$D1_PORT" COUNT kv
    expect "keel COUNT kv via daemon 2" "$KEYSPACE" -p "$D2_PORT" COUNT kv
    expect "redis DBSIZE (primary)" "$KEYSPACE" -p "$RPRIMARY_PORT" DBSIZE
    expect "redis DBSIZE (replica)" "$KEYSPACE" -p "$RREPLICA_PORT" DBSIZE
}
check_counts

for rep in $(seq 1 "$R"); do
    pair PUT "$rep" "$N_PUT" -m put -s kv -- -m setwait -w 1
    pair GET "$rep" "$N_GET" -m get -s kv -- -m get
done
check_counts
keel_protected || fail "keel partitions not all PROTECTED after the runs"
keel_du=$(du -sh "$KEEL_DIR" | cut -f1)
redis_du="$(du -sh "$RPRIMARY_DIR" | cut -f1) + $(du -sh "$RREPLICA_DIR" | cut -f1)"
stop_pid "$RREPLICA_PID"
stop_pid "$RPRIMARY_PID"
stop_pid "$LOCAL_PID" 40
grep -q '^keel local: stopped' "$KEEL_LOG" || echo "note: keel local's last lines: $(tail -n 3 "$KEEL_LOG")"

# fsync on every write, on both sides, if the daemons can be told to
ALWAYS_ROW=0
if "$KEEL_BIN" daemon --help 2>&1 | grep -q -- '--sync always'; then
    ALWAYS_ROW=1
    echo
    echo "fsync-always pair: keel daemons --sync always vs redis appendfsync always (primary and replica)"
    start_keel_manual always
    setup_keel_space
    echo "keel coordinator 127.0.0.1:$COORD_PORT, daemons 127.0.0.1:$D1_PORT and :$D2_PORT (pids $KEEL_SERVER_PIDS)"
    start_redis_pair always
    for rep in $(seq 1 "$R"); do
        pair PUTA "$rep" "$N_ALWAYS" -m put -s kv -- -m setwait -w 1
    done
    keel_protected || fail "keel partitions not all PROTECTED after the fsync-always runs"
    stop_pid "$RREPLICA_PID"
    stop_pid "$RPRIMARY_PID"
    for p in $KEEL_SERVER_PIDS; do stop_pid "$p" 20; done
fi

echo
echo "### Results (median of $R runs each; 50 connections, pipeline 1)"
echo
echo "| test (keel / redis) | keel rps | redis rps | keel/redis | keel p50 ms | redis p50 ms | keel p99 ms | redis p99 ms | spread keel / redis |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
if [ "$ROUTED" = 1 ]; then KGET="GET on the partition's primary (routed)"; KHOW=routed
else KGET="GET via any daemon (forwarded when not primary)"; KHOW="via any daemon"; fi
ROWS=("PUT|PUT, 2 copies, $KHOW|SET + WAIT 1 0" "GET|$KGET|GET on the primary")
[ "$ALWAYS_ROW" = 1 ] && ROWS+=("PUTA|PUT, 2 copies, --sync always, $KHOW|SET + WAIT 1 0, appendfsync always")
for row in "${ROWS[@]}"; do
    IFS='|' read -r label kname rname <<<"$row"
    kr=$(median "$label" keel 4) || fail "no results for $label keel"
    rr=$(median "$label" redis 4) || fail "no results for $label redis"
    printf '| %s / %s | %.0f%s | %.0f%s | %s | %s | %s | %s | %s | %s / %s |\n' \
        "$kname" "$rname" "$kr" "$(disturbed "$label" keel)" "$rr" "$(disturbed "$label" redis)" \
        "$(ratio "$kr" "$rr")" "$(median "$label" keel 5)" "$(median "$label" redis 5)" \
        "$(median "$label" keel 6)" "$(median "$label" redis 6)" \
        "$(spread "$label" keel)" "$(spread "$label" redis)"
done
echo
if [ "$ALWAYS_ROW" = 0 ]; then
    echo "fsync on every write: **skipped** — \`keel daemon --help\` offers no --sync always (the daemons always use batch)"
fi
echo
echo "### Aims"
echo
aim PUT 1.5 "replicated PUT (2 copies, $KHOW) / SET + WAIT 1 0"
aim GET 0.9 "keel $KGET / GET on the redis primary"
echo
echo "data on disk after the runs: keel $keel_du (coordinator + 2 daemons), redis $redis_du (primary + replica)"
echo "spread = (max - min) / median of the $R rps values; '-' with R=1."
[ "$FLAGGED" -eq 0 ] || echo "* = the median includes runs disturbed by other load (RETRIES ran out)."
echo "other load (percent of all cores used by processes other than the servers and the client):"
echo "  in the second before each run: $(awk -F'\t' '{ s += $7; if ($7 > m) m = $7 } END { printf "mean %.0f%%, max %d%%", s / NR, m }' "$RESULTS")"
echo "  during the kept runs:          $(awk -F'\t' '{ s += $8; if ($8 > m) m = $8 } END { printf "mean %.0f%%, max %d%%", s / NR, m }' "$RESULTS")"
echo "runs discarded for other load above ${MAX_OTHER}%: $DISCARDED; kept although disturbed: $FLAGGED"

if [ "$FAILOVER" = 1 ]; then
    echo
    echo "### Failover and tail replay (bench/failover_times.py)"
    echo
    echo '```'
    rc=0
    KEEL_BIN="$KEEL_BIN" timeout "$FO_TIMEOUT" /usr/bin/python3 "$REPO/bench/failover_times.py" \
        --client "$CLIENT" --trials "$FO_TRIALS" --tail-trials "$TAIL_TRIALS" --tail-n "$TAIL_N" \
        --dir "$WORK/failover" </dev/null >"$WORK/failover.out" 2>&1 &
    fpid=$!
    PIDS="$PIDS $fpid"
    wait "$fpid" || rc=$?
    forget_pid "$fpid"
    grep -v '^20[0-9][0-9]-' "$WORK/failover.out" | grep -v '^|' || true
    echo '```'
    echo
    grep '^|' "$WORK/failover.out" || true
    [ "$rc" -eq 0 ] || { tail -n 60 "$WORK/failover.out" >&2; fail "failover_times.py exited $rc"; }
fi
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
