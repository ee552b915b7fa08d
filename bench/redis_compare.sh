#!/usr/bin/env bash
# bench/redis_compare.sh — keel standalone and Redis, side by side, in one run.
#
# What it measures: redis-benchmark throughput (requests/s) and p50/p99
# latency for writes and reads against `keel standalone` and `redis-server`
# started by this script, with the same client count, value size, key space
# and pipeline depth, and prints one table with the keel/redis ratio.
#
# Method (docs/BENCHMARKS.md has the full write-up):
#   1. keel runs with --sync batch (or --sync MODE); redis with
#      --appendonly yes --appendfsync everysec --save ''. Each has its own
#      directory inside one mktemp dir; ports are picked at run time.
#   2. Preload: both servers get the same KEYSPACE keys key:000000000000 ..
#      key:<KEYSPACE-1>, each with a DATA-byte value, sent as pipelined
#      streams of PRELOAD_CHUNK commands by `redis-cli --pipe` (PUT kv KEY v
#      VALUE for keel, SET KEY VALUE for redis). Those are exactly the names
#      redis-benchmark's `key:__rand_int__` expands to with -r KEYSPACE, so
#      every GET hits. The script checks that COUNT kv / DBSIZE equal
#      KEYSPACE before and after measuring.
#   3. For each pipeline depth (1 and 16) and each repetition r = 1..R: write
#      test then read test; within each test keel and redis run back to back,
#      keel first on odd r, redis first on even r. Each cell reported is the
#      median over the R runs (rps, p50 and p99 each taken separately). A run
#      during which other processes on the host used more than MAX_OTHER % of
#      the cores is discarded and repeated (at most RETRIES times).
#   4. With ALWAYS=1 a second pair is started (keel --sync always, redis
#      --appendfsync always) and the write tests are repeated on it.
#
# Invariants:
#   1. Every process the script starts is recorded by pid and stopped (TERM,
#      then KILL after 10 s) on every exit path; nothing is killed by name.
#   2. Every external wait is bounded: server start 10 s, each
#      redis-benchmark run and preload stream RUN_TIMEOUT s (timeout(1)).
#   3. The keel binary is copied into the temp dir first, so a rebuild of
#      build/keel during the run does not change what is measured.
#   4. The exit status is 0 when every step ran, whatever the ratios are;
#      nonzero when a server failed to start or died, a benchmark failed or
#      timed out, a sanity check failed, or the output could not be parsed.
#
# Usage: bench/redis_compare.sh [--sync always|batch|none] [--always] [--quick]
# Environment: see usage() below.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/redis_compare.sh [--sync always|batch|none] [--always] [--quick] [--keep]

  --sync MODE   keel's --sync policy for the main comparison (default batch)
  --always      also compare keel --sync always with redis appendfsync always
                (same as ALWAYS=1)
  --quick       short smoke run (same as QUICK=1)
  --keep        keep the temp dir (data, logs, raw CSV) and print its path

environment (defaults in brackets; QUICK=1 changes the defaults shown second):
  R            repetitions of each measurement, median reported   [3 | 1]
  N_P1         requests per run at pipeline 1                     [200000 | 20000]
  N_P16        requests per run at pipeline 16                    [1000000 | 100000]
  N_ALWAYS_P1  requests per write run at pipeline 1, ALWAYS=1     [N_P1]
  N_ALWAYS_P16 requests per write run at pipeline 16, ALWAYS=1    [N_P16]
  CLIENTS      redis-benchmark -c                                 [50]
  KEYSPACE     redis-benchmark -r, and the number of preloaded keys [100000]
  DATA         value size in bytes (-d for SET, literal for PUT)  [100]
  PIPELINES    space-separated -P values; P1 runs use N_P1 requests,
               every other depth N_P16                             ["1 16"]
  KEEL         keel binary                                        [<repo>/build/keel]
  RUN_TIMEOUT  seconds allowed for one redis-benchmark run        [600]
  PRELOAD_CHUNK  commands per redis-cli --pipe stream in the preload [10000]
  QUIET_WAIT   before each run, wait up to this many seconds for the host
               to be quiet (CPU busy below QUIET_BUSY % of all cores) [0]
  QUIET_BUSY   the busy threshold for QUIET_WAIT, percent          [25]
  MAX_OTHER    a run during which other processes used more than this
               percent of all cores is discarded and repeated      [25]
  RETRIES      at most this many repeats per measurement; after that the
               last run is kept and flagged                        [2]
  TMPDIR       where the temp dir is made (its filesystem matters for fsync)
EOF
}

# ---------------------------------------------------------------- settings --

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEEL_SYNC="batch"
ALWAYS=${ALWAYS:-0}
QUICK=${QUICK:-0}
KEEP=0

while [ $# -gt 0 ]; do
    case "$1" in
        --sync)
            [ $# -ge 2 ] || { echo "redis_compare: --sync needs a value" >&2; exit 2; }
            KEEL_SYNC=$2; shift 2 ;;
        --sync=*) KEEL_SYNC=${1#--sync=}; shift ;;
        --always) ALWAYS=1; shift ;;
        --quick) QUICK=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "redis_compare: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

case "$KEEL_SYNC" in
    always|batch|none) ;;
    *) echo "redis_compare: --sync must be always, batch or none (got '$KEEL_SYNC')" >&2; exit 2 ;;
esac

if [ "$QUICK" = 1 ]; then
    R=${R:-1}; N_P1=${N_P1:-20000}; N_P16=${N_P16:-100000}
else
    R=${R:-3}; N_P1=${N_P1:-200000}; N_P16=${N_P16:-1000000}
fi
N_ALWAYS_P1=${N_ALWAYS_P1:-$N_P1}
N_ALWAYS_P16=${N_ALWAYS_P16:-$N_P16}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
DATA=${DATA:-100}
PIPELINES=${PIPELINES:-"1 16"}
KEEL=${KEEL:-$REPO/build/keel}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
PRELOAD_CHUNK=${PRELOAD_CHUNK:-10000}
MAX_OTHER=${MAX_OTHER:-25}
RETRIES=${RETRIES:-2}
QUIET_WAIT=${QUIET_WAIT:-0}
QUIET_BUSY=${QUIET_BUSY:-25}

for v in R N_P1 N_P16 N_ALWAYS_P1 N_ALWAYS_P16 CLIENTS KEYSPACE DATA RUN_TIMEOUT PRELOAD_CHUNK QUIET_BUSY MAX_OTHER; do
    val=${!v}
    case "$val" in
        ''|*[!0-9]*|0) echo "redis_compare: $v must be a positive integer (got '$val')" >&2; exit 2 ;;
    esac
done
case "$QUIET_WAIT" in
    ''|*[!0-9]*) echo "redis_compare: QUIET_WAIT must be a number of seconds (got '$QUIET_WAIT')" >&2; exit 2 ;;
esac
case "$RETRIES" in
    ''|*[!0-9]*) echo "redis_compare: RETRIES must be a non-negative integer (got '$RETRIES')" >&2; exit 2 ;;
esac
for p in $PIPELINES; do
    case "$p" in
        ''|*[!0-9]*|0) echo "redis_compare: PIPELINES must hold positive integers (got '$p')" >&2; exit 2 ;;
    esac
done

# ------------------------------------------------------------ prerequisites --

missing=""
for tool in redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools \
            timeout:coreutils awk:mawk; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    missing=$(printf '%s\n' $missing | sort -u | tr '\n' ' ')
    echo "redis_compare: missing tools; install with: sudo apt-get install -y $missing" >&2
    exit 2
fi
if [ ! -x "$KEEL" ]; then
    echo "redis_compare: keel binary '$KEEL' not found; build it with: make -j2 all" >&2
    exit 2
fi

# ------------------------------------------------- process and temp cleanup --

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXXXX")
PIDS=""            # every live process this script started, by pid

forget_pid() {     # forget_pid PID: drop PID from PIDS (it has been reaped)
    local p out=""
    for p in $PIDS; do [ "$p" = "$1" ] || out="$out $p"; done
    PIDS=$out
}

stop_pid() {       # stop_pid PID: TERM, wait up to 10 s, then KILL; reap
    local pid=$1
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            # a zombie child still answers kill -0; wait reaps it below
            if [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ]; then break; fi
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in $PIDS; do stop_pid "$p"; done
    if [ "$KEEP" = 1 ]; then
        echo "redis_compare: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "redis_compare: interrupted" >&2; exit 130' INT TERM

fail() { echo "redis_compare: FAILED: $*" >&2; exit 1; }

# -------------------------------------------------------------- the servers --

pick_port() {      # prints a port with no listener, below the ephemeral range
    local lo p
    lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$lo" -gt 20100 ] 2>/dev/null || lo=32768
    for _ in $(seq 1 100); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % (lo - 20000) ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

wait_ready() {     # wait_ready PID PORT: up to 10 s for PONG from our process
    local pid=$1 port=$2
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [ "$(timeout 2 redis-cli -p "$port" PING 2>/dev/null)" = PONG ]; then
            # the answer came from our process only if it is still alive
            kill -0 "$pid" 2>/dev/null && return 0
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# start_keel SYNC: sets KEEL_PID KEEL_PORT KEEL_DIR
start_keel() {
    local sync=$1 attempt port dir pid
    for attempt in 1 2 3; do
        port=$(pick_port) || fail "no free port"
        dir="$WORK/keel-$sync-$port"
        mkdir -p "$dir"
        "$KEEL_BIN" standalone -f -l 127.0.0.1 -p "$port" -D "$dir/data" --sync "$sync" \
            >"$dir/log" 2>&1 &
        pid=$!
        PIDS="$PIDS $pid"
        if wait_ready "$pid" "$port"; then
            KEEL_PID=$pid KEEL_PORT=$port KEEL_DIR=$dir
            return 0
        fi
        stop_pid "$pid"
        echo "redis_compare: keel did not start on port $port (attempt $attempt); log:" >&2
        tail -n 5 "$dir/log" >&2 || true
    done
    fail "keel standalone would not start"
}

# start_redis FSYNC: sets REDIS_PID REDIS_PORT REDIS_DIR
start_redis() {
    local fsync=$1 attempt port dir pid
    for attempt in 1 2 3; do
        port=$(pick_port) || fail "no free port"
        dir="$WORK/redis-$fsync-$port"
        mkdir -p "$dir"
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --daemonize no \
            --appendonly yes --appendfsync "$fsync" --save '' \
            --logfile "$dir/log" >"$dir/stdout" 2>&1 &
        pid=$!
        PIDS="$PIDS $pid"
        if wait_ready "$pid" "$port"; then
            REDIS_PID=$pid REDIS_PORT=$port REDIS_DIR=$dir
            return 0
        fi
        stop_pid "$pid"
        echo "redis_compare: redis-server did not start on port $port (attempt $attempt); log:" >&2
        tail -n 5 "$dir/log" "$dir/stdout" >&2 || true
    done
    fail "redis-server would not start"
}

alive_or_fail() {  # alive_or_fail NAME PID LOG
    kill -0 "$2" 2>/dev/null && [ "$(ps -o stat= -p "$2" 2>/dev/null | cut -c1)" != Z ] && return 0
    echo "redis_compare: $1 (pid $2) died; last log lines:" >&2
    tail -n 20 "$3" >&2 || true
    fail "$1 died during the benchmark"
}

# ------------------------------------------------------- preload and checks --

VALUE=$(head -c "$DATA" /dev/zero | tr '\0' x)   # what redis-benchmark -d sends

# make_preload KIND: RESP streams writing every key once (KIND keel|redis), in
# files $WORK/preload-KIND.NNNN of PRELOAD_CHUNK commands each
make_preload() {
    awk -v n="$KEYSPACE" -v v="$VALUE" -v kind="$1" -v chunk="$PRELOAD_CHUNK" \
        -v base="$WORK/preload-$1" 'BEGIN {
        for (i = 0; i < n; i++) {
            if (i % chunk == 0) {
                if (i) close(f)
                f = sprintf("%s.%04d", base, i / chunk)
            }
            k = sprintf("key:%012d", i)
            if (kind == "keel")
                printf "*5\r\n$3\r\nPUT\r\n$2\r\nkv\r\n$%d\r\n%s\r\n$1\r\nv\r\n$%d\r\n%s\r\n", length(k), k, length(v), v > f
            else
                printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v > f
        }
        close(f)
    }'
}

# run_bg IN OUT ERR CMD...: run CMD in the background with a RUN_TIMEOUT bound
# and wait for it, so an INT/TERM reaches the trap at once; returns CMD's status
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

# preload PORT KIND: pipe each chunk through one redis-cli --pipe, require
# zero errors and a reply for every command
preload() {
    local port=$1 kind=$2 t0 rc f want total=0
    make_preload "$kind"
    t0=$(date +%s.%N)
    for f in "$WORK/preload-$kind".[0-9][0-9][0-9][0-9]; do
        want=$(grep -c '^\*' "$f")
        rc=0
        run_bg "$f" "$f.out" "$f.err" redis-cli -p "$port" --pipe || rc=$?
        [ "$rc" = 0 ] || fail "preload of $kind failed ($rc): $(cat "$f.out" "$f.err")"
        grep -q "errors: 0, replies: $want\$" "$f.out" \
            || fail "preload of $kind: unexpected result: $(cat "$f.out" "$f.err")"
        total=$((total + want))
    done
    [ "$total" = "$KEYSPACE" ] || fail "preload of $kind sent $total commands, not $KEYSPACE"
    echo "preloaded $KEYSPACE keys into $kind in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }') s"
}

# expect WHAT WANT CMD...: run redis-cli CMD, compare its output with WANT
expect() {
    local what=$1 want=$2 got
    shift 2
    got=$(timeout 10 redis-cli "$@" 2>&1) || fail "$what: redis-cli failed: $got"
    [ "$got" = "$want" ] || fail "$what: expected '$want', got '$got'"
}

setup_keel_space() {  # SPACE.ADD and one checked PUT/GET of the exact commands
    expect "keel SPACE.ADD" OK -p "$KEEL_PORT" SPACE.ADD space kv key k attributes v
    expect "keel PUT" OK -p "$KEEL_PORT" PUT kv key:000000000000 v "$VALUE"
    expect "keel GET" "$(printf 'v\n%s' "$VALUE")" -p "$KEEL_PORT" GET kv key:000000000000
}

check_counts() {      # both servers hold exactly KEYSPACE keys
    expect "keel COUNT kv" "$KEYSPACE" -p "$KEEL_PORT" COUNT kv
    expect "redis DBSIZE" "$KEYSPACE" -p "$REDIS_PORT" DBSIZE
}

# ------------------------------------------------------------ benchmarking --

# label server rep rps p50 p99 other-load-before other-load-during disturbed(0/1),
# tab-separated
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
RUN_NO=0
DISCARDED=0        # runs thrown away because other load disturbed them
FLAGGED=0          # disturbed runs kept because RETRIES ran out

proc_ticks() {     # proc_ticks PID...: user + system clock ticks of those processes
    local p t=0 x
    for p in "$@"; do
        x=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || x=0
        t=$((t + ${x:-0}))
    done
    echo "$t"
}

host_ticks() {     # busy and idle clock ticks of the whole host (steal counts as busy)
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6; exit }' /proc/stat
}

# child_ticks: sets CT to the CPU ticks of this shell's reaped children. The
# times builtin must run in this shell, not in a $(...) subshell, to see them.
child_ticks() {
    times >"$WORK/times"
    CT=$(awk 'NR == 2 { t = 0
             for (i = 1; i <= 2; i++) { split($i, a, "m"); sub(/s$/, "", a[2]); t += a[1] * 60 + a[2] }
             printf "%d\n", t * 100 }' "$WORK/times")
}

# other_during H0 H1 OURS: percent of all cores used by other processes between
# two host_ticks samples, given the ticks our own processes used meanwhile
other_during() {
    awk -v a="$1" -v b="$2" -v s="$3" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        busy = y[1] - x[1]; total = busy + y[2] - x[2]
        if (total <= 0) { print 0; exit }
        o = busy - s; if (o < 0) o = 0
        printf "%.0f\n", 100 * o / total }'
}

# cpu_busy: sets BUSY to the percent of all cores used over the next second by
# everything except the two servers under test
cpu_busy() {
    local h0 h1 s0 s1
    h0=$(host_ticks); s0=$(proc_ticks "$KEEL_PID" "$REDIS_PID")
    sleep 1
    h1=$(host_ticks); s1=$(proc_ticks "$KEEL_PID" "$REDIS_PID")
    BUSY=$(other_during "$h0" "$h1" $((s1 - s0)))
}

# quiet: set BUSY just before a run, first waiting up to QUIET_WAIT seconds
# for the other load on the host to drop below QUIET_BUSY
quiet() {
    local waited=0
    cpu_busy
    while [ "$waited" -lt "$QUIET_WAIT" ] && [ "$BUSY" -ge "$QUIET_BUSY" ]; do
        cpu_busy
        waited=$((waited + 1))
    done
}

# bench LABEL SERVER REP PORT PID LOG N P ARGS...: one measurement. A run
# during which other processes used more than MAX_OTHER % of the cores is
# discarded and repeated, at most RETRIES times; if every attempt was
# disturbed the last one is kept and flagged.
bench() {
    local label=$1 server=$2 rep=$3 port=$4 pid=$5 log=$6 n=$7 p=$8 rc line attempt flag
    shift 8
    for attempt in $(seq 0 "$RETRIES"); do
        RUN_NO=$((RUN_NO + 1))
        local out="$WORK/run-$RUN_NO.csv" err="$WORK/run-$RUN_NO.err"
        alive_or_fail "$server" "$pid" "$log"
        quiet
        local h0 h1 s0 s1 c0 c1
        child_ticks; c0=$CT
        h0=$(host_ticks); s0=$(proc_ticks "$KEEL_PID" "$REDIS_PID")
        rc=0
        run_bg /dev/null "$out" "$err" redis-benchmark -h 127.0.0.1 -p "$port" -c "$CLIENTS" \
            -n "$n" -r "$KEYSPACE" -P "$p" --csv "$@" || rc=$?
        h1=$(host_ticks); s1=$(proc_ticks "$KEEL_PID" "$REDIS_PID")
        child_ticks; c1=$CT
        DURING=$(other_during "$h0" "$h1" $((s1 - s0 + c1 - c0)))
        if [ "$rc" -ne 0 ]; then
            cat "$err" >&2
            [ "$rc" -eq 124 ] && fail "$label on $server timed out after ${RUN_TIMEOUT}s"
            fail "$label on $server: redis-benchmark exited $rc"
        fi
        alive_or_fail "$server" "$pid" "$log"
        # CSV: header "test","rps","avg_latency_ms","min_latency_ms",
        #      "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        line=$(awk -F',' 'NR == 2 && NF == 8 { gsub(/"/, "", $2); gsub(/"/, "", $5); gsub(/"/, "", $7)
                                               print $2 "\t" $5 "\t" $7 }' "$out")
        case "$line" in
            [0-9]*"	"[0-9]*"	"[0-9]*) ;;
            *) cat "$out" "$err" >&2; fail "$label on $server: could not parse redis-benchmark CSV" ;;
        esac
        awk -v l="$line" 'BEGIN { split(l, f, "\t"); exit !(f[1] + 0 > 0) }' \
            || fail "$label on $server: zero throughput"
        flag=""
        if [ "$DURING" -gt "$MAX_OTHER" ]; then
            if [ "$attempt" -lt "$RETRIES" ]; then
                flag="discarded"
            else
                flag="kept, disturbed"
                FLAGGED=$((FLAGGED + 1))
            fi
        fi
        printf '  %-8s %-6s rep %d: %10.0f rps  p50 %6s ms  p99 %7s ms  other load: before %3s%%, during %3s%%%s\n' \
            "$label" "$server" "$rep" "$(cut -f1 <<<"$line")" "$(cut -f2 <<<"$line")" \
            "$(cut -f3 <<<"$line")" "$BUSY" "$DURING" "${flag:+  ($flag)}"
        if [ "$flag" = discarded ]; then
            DISCARDED=$((DISCARDED + 1))
            continue
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%d\n' "$label" "$server" "$rep" "$line" "$BUSY" "$DURING" \
            "$([ -n "$flag" ] && echo 1 || echo 0)" >>"$RESULTS"
        return 0
    done
}

# pair LABEL REP N P KEELARGS -- REDISARGS: keel and redis back to back,
# order alternating with REP
pair() {
    local label=$1 rep=$2 n=$3 p=$4 keelargs=() redisargs=() side=keel
    shift 4
    for a in "$@"; do
        if [ "$a" = -- ] && [ "$side" = keel ]; then side=redis; continue; fi
        if [ "$side" = keel ]; then keelargs+=("$a"); else redisargs+=("$a"); fi
    done
    if [ $((rep % 2)) -eq 1 ]; then
        bench "$label" keel "$rep" "$KEEL_PORT" "$KEEL_PID" "$KEEL_DIR/log" "$n" "$p" "${keelargs[@]}"
        bench "$label" redis "$rep" "$REDIS_PORT" "$REDIS_PID" "$REDIS_DIR/log" "$n" "$p" "${redisargs[@]}"
    else
        bench "$label" redis "$rep" "$REDIS_PORT" "$REDIS_PID" "$REDIS_DIR/log" "$n" "$p" "${redisargs[@]}"
        bench "$label" keel "$rep" "$KEEL_PORT" "$KEEL_PID" "$KEEL_DIR/log" "$n" "$p" "${keelargs[@]}"
    fi
}

# median LABEL SERVER COLUMN(4=rps 5=p50 6=p99)
median() {
    awk -F'\t' -v l="$1" -v s="$2" -v c="$3" '$1 == l && $2 == s { print $c }' "$RESULTS" \
        | sort -g \
        | awk '{ a[NR] = $1 } END {
                   if (NR == 0) exit 1
                   if (NR % 2) print a[(NR + 1) / 2]
                   else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

spread() {         # spread LABEL SERVER: (max - min) / median of rps, percent
    if [ "$R" -lt 2 ]; then echo "-"; return 0; fi
    awk -F'\t' -v l="$1" -v s="$2" -v m="$(median "$1" "$2" 4)" '$1 == l && $2 == s {
            if (n == 0 || $4 < lo) lo = $4
            if (n == 0 || $4 > hi) hi = $4
            n++ }
        END { printf "%.0f%%\n", 100 * (hi - lo) / m }' "$RESULTS"
}

disturbed() {      # disturbed LABEL SERVER: "*" if a kept run was disturbed
    awk -F'\t' -v l="$1" -v s="$2" '$1 == l && $2 == s && $9 == 1 { d = 1 }
        END { if (d) printf "*" }' "$RESULTS"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }
ge()    { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }

# table TITLE ROW...; ROW is "LABEL|keel test name|redis test name"
table() {
    local title=$1 row label kname rname kr rr
    shift
    echo
    echo "### $title"
    echo
    echo "| test (keel / redis) | keel rps | redis rps | keel/redis | keel p50 ms | redis p50 ms | keel p99 ms | redis p99 ms | spread keel / redis |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in "$@"; do
        IFS='|' read -r label kname rname <<<"$row"
        kr=$(median "$label" keel 4) || fail "no results for $label keel"
        rr=$(median "$label" redis 4) || fail "no results for $label redis"
        printf '| %s / %s | %.0f%s | %.0f%s | %s | %s | %s | %s | %s | %s / %s |\n' \
            "$kname" "$rname" "$kr" "$(disturbed "$label" keel)" "$rr" "$(disturbed "$label" redis)" \
            "$(ratio "$kr" "$rr")" \
            "$(median "$label" keel 5)" "$(median "$label" redis 5)" \
            "$(median "$label" keel 6)" "$(median "$label" redis 6)" \
            "$(spread "$label" keel)" "$(spread "$label" redis)"
    done
}

# aim LABEL MIN DESCRIPTION
aim() {
    local kr rr r
    kr=$(median "$1" keel 4); rr=$(median "$1" redis 4)
    r=$(awk -v a="$kr" -v b="$rr" 'BEGIN { printf "%.3f", a / b }')
    # judged on the unrounded ratio: 0.8996 prints as 0.900 but is not >= 0.9
    if ge "$(awk -v a="$kr" -v b="$rr" 'BEGIN { printf "%.9f", a / b }')" "$2"; then
        printf -- '- %s: ratio %s, aim >= %s: **met**\n' "$3" "$r" "$2"
    else
        printf -- '- %s: ratio %s, aim >= %s: **not met**\n' "$3" "$r" "$2"
    fi
}

nreq() { if [ "$1" = 1 ]; then echo "$N_P1"; elif [ "$1" = 16 ]; then echo "$N_P16"; else echo "$N_P16"; fi; }
nreq_always() { if [ "$1" = 1 ]; then echo "$N_ALWAYS_P1"; else echo "$N_ALWAYS_P16"; fi; }

# -------------------------------------------------------------------- main --

KEEL_BIN="$WORK/keel"
cp "$KEEL" "$KEEL_BIN"

commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "none (no commit yet)")
dirty=""
if git -C "$REPO" rev-parse --verify -q HEAD >/dev/null 2>&1 \
   && [ -n "$(git -C "$REPO" status --porcelain -- src include Makefile 2>/dev/null)" ]; then
    dirty=" (plus uncommitted or untracked changes under src/ include/ Makefile)"
fi

echo "## keel vs redis — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "- machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r)"
echo "- keel: $("$KEEL_BIN" version 2>&1 | head -n1), binary $KEEL (sha256 $(sha256sum "$KEEL_BIN" | cut -c1-12), modified $(date -u -r "$KEEL" +%Y-%m-%dT%H:%M:%SZ)); the tree is at commit $commit$dirty, which is what the binary was built from only if it was built after the last change"
echo "- redis: $(redis-server --version | awk '{print $3}' | sed 's/v=//'), redis-benchmark $(redis-benchmark --version 2>/dev/null | awk '{print $2}')"
echo "- data dir filesystem: $(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }') ($WORK)"
echo "- load average before start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- settings: R=$R CLIENTS=$CLIENTS KEYSPACE=$KEYSPACE DATA=$DATA PIPELINES=\"$PIPELINES\" N_P1=$N_P1 N_P16=$N_P16 keel --sync $KEEL_SYNC, redis appendfsync everysec"
echo "- noise control: MAX_OTHER=$MAX_OTHER% RETRIES=$RETRIES QUIET_WAIT=${QUIET_WAIT}s QUIET_BUSY=$QUIET_BUSY%"
echo

start_keel "$KEEL_SYNC"
start_redis everysec
echo "keel pid $KEEL_PID port $KEEL_PORT; redis pid $REDIS_PID port $REDIS_PORT"

setup_keel_space
preload "$KEEL_PORT" keel
preload "$REDIS_PORT" redis
check_counts

ROWS=()
for p in $PIPELINES; do
    n=$(nreq "$p")
    for rep in $(seq 1 "$R"); do
        pair "PUT-P$p" "$rep" "$n" "$p" PUT kv key:__rand_int__ v "$VALUE" -- -t set -d "$DATA"
        pair "GET-P$p" "$rep" "$n" "$p" GET kv key:__rand_int__ -- -t get -d "$DATA"
    done
    ROWS+=("PUT-P$p|PUT P$p|SET P$p" "GET-P$p|GET P$p|GET P$p")
done
# the writes only overwrite preloaded keys: the counts must not have moved
check_counts
keel_du=$(du -sh "$KEEL_DIR/data" | cut -f1)
redis_du=$(du -sh "$REDIS_DIR" | cut -f1)
stop_pid "$KEEL_PID"
stop_pid "$REDIS_PID"

if [ "$ALWAYS" = 1 ]; then
    echo
    echo "fsync-always pair: keel --sync always vs redis appendfsync always"
    start_keel always
    start_redis always
    echo "keel pid $KEEL_PID port $KEEL_PORT; redis pid $REDIS_PID port $REDIS_PORT"
    setup_keel_space
    for p in $PIPELINES; do
        n=$(nreq_always "$p")
        for rep in $(seq 1 "$R"); do
            pair "PUTA-P$p" "$rep" "$n" "$p" PUT kv key:__rand_int__ v "$VALUE" -- -t set -d "$DATA"
        done
    done
    stop_pid "$KEEL_PID"
    stop_pid "$REDIS_PID"
fi

echo
echo "## Results (median of $R runs each)"
table "keel --sync $KEEL_SYNC vs redis appendonly everysec" "${ROWS[@]}"
if [ "$ALWAYS" = 1 ]; then
    AROWS=()
    for p in $PIPELINES; do AROWS+=("PUTA-P$p|PUT P$p|SET P$p"); done
    table "keel --sync always vs redis appendfsync always" "${AROWS[@]}"
fi

echo
echo "### Aims"
echo
for p in $PIPELINES; do
    aim "GET-P$p" 0.9 "GET P$p keel/redis"
done
for p in $PIPELINES; do
    if [ "$KEEL_SYNC" = batch ]; then
        aim "PUT-P$p" 0.8 "PUT P$p (keel batch) / SET P$p (redis everysec)"
    else
        echo "- PUT P$p: aim is defined for keel --sync batch; this run used --sync $KEEL_SYNC: n/a"
    fi
done
echo
echo "data on disk after the main runs: keel $keel_du, redis $redis_du"
echo "spread = (max - min) / median of the $R rps values; '-' with R=1."
[ "$FLAGGED" -eq 0 ] || echo "* = the median includes runs disturbed by other load (RETRIES ran out)."
echo "other load (percent of all cores used by processes other than the servers and"
echo "redis-benchmark; includes steal and unattributed kernel work):"
echo "  in the second before each run: $(awk -F'\t' '{ s += $7; if ($7 > m) m = $7 } END { printf "mean %.0f%%, max %d%%", s / NR, m }' "$RESULTS")"
echo "  during the kept runs:          $(awk -F'\t' '{ s += $8; if ($8 > m) m = $8 } END { printf "mean %.0f%%, max %d%%", s / NR, m }' "$RESULTS")"
echo "runs discarded for other load above ${MAX_OTHER}%: $DISCARDED; kept although disturbed (retries exhausted): $FLAGGED"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
