#!/usr/bin/env bash
# bench/profile_put.sh — where keel standalone spends CPU during a PUT load.
#
# Starts `keel standalone --sync SYNC` on a free port in a mktemp dir, creates
# the benchmark space (space kv key k attributes v), then for each pipeline
# depth runs `perf record -g` attached to the keel pid for exactly the length
# of one redis-benchmark PUT run (same command as bench/redis_compare.sh:
# 50 clients, random keys in 0..KEYSPACE-1, a DATA-byte value) and prints
# perf's flat profile (self time by symbol) and the per-thread split.
#
# Invariants:
#   1. Every process started here (keel, perf, redis-benchmark) is recorded by
#      pid and stopped on every exit path; nothing is killed by name.
#   2. Every wait is bounded (server start 10 s, each run RUN_TIMEOUT s).
#   3. Exit 0 only if every step ran; the profile is printed, not judged.
#
# Usage: bench/profile_put.sh            (env: SYNC=batch PIPELINES="1 16"
#        N_P1=200000 N_P16=1000000 CLIENTS=50 KEYSPACE=100000 DATA=100
#        TOP=25 KEEL=<repo>/build/keel RUN_TIMEOUT=600 KEEP=0)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYNC=${SYNC:-batch}
PIPELINES=${PIPELINES:-"1 16"}
N_P1=${N_P1:-200000}
N_P16=${N_P16:-1000000}
CLIENTS=${CLIENTS:-50}
KEYSPACE=${KEYSPACE:-100000}
DATA=${DATA:-100}
TOP=${TOP:-25}
KEEL=${KEEL:-$REPO/build/keel}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
KEEP=${KEEP:-0}

case "$SYNC" in always|batch|none) ;; *) echo "profile_put: SYNC must be always, batch or none" >&2; exit 2 ;; esac
for v in N_P1 N_P16 CLIENTS KEYSPACE DATA TOP RUN_TIMEOUT; do
    case "${!v}" in ''|*[!0-9]*|0) echo "profile_put: $v must be a positive integer" >&2; exit 2 ;; esac
done
for tool in perf:linux-perf redis-benchmark:redis-tools redis-cli:redis-tools timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null 2>&1 \
        || { echo "profile_put: ${tool%%:*} missing; install with: sudo apt-get install -y ${tool#*:}" >&2; exit 2; }
done
[ -x "$KEEL" ] || { echo "profile_put: keel binary '$KEEL' not found; build it with: make -j2 all" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-profile.XXXXXX")
PIDS=""

forget_pid() {
    local p out=""
    for p in $PIDS; do [ "$p" = "$1" ] || out="$out $p"; done
    PIDS=$out
}

stop_pid() {       # stop_pid PID [SIGNAL]: signal (TERM), wait 10 s, KILL, reap
    local pid=$1 sig=${2:-TERM}
    if kill -0 "$pid" 2>/dev/null; then
        kill -"$sig" "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" = Z ] && break
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
    if [ "$KEEP" = 1 ]; then echo "profile_put: kept $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "profile_put: interrupted" >&2; exit 130' INT TERM

fail() { echo "profile_put: FAILED: $*" >&2; exit 1; }

pick_port() {
    local lo p
    lo=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$lo" -gt 20100 ] 2>/dev/null || lo=32768
    for _ in $(seq 1 100); do
        p=$(( 20000 + (RANDOM * 32768 + RANDOM) % (lo - 20000) ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

report() {         # report DATA ARGS...: perf's table without comments or call graphs
    local data=$1
    shift
    perf report -i "$data" --stdio -g none --percent-limit 0.3 "$@" 2>/dev/null \
        | grep -v -e '^#' -e '^$' | sed 's/[[:space:]]*$//' || true
}

cp "$KEEL" "$WORK/keel"
PORT=$(pick_port) || fail "no free port"
"$WORK/keel" standalone -f -l 127.0.0.1 -p "$PORT" -D "$WORK/data" --sync "$SYNC" >"$WORK/keel.log" 2>&1 &
KPID=$!
PIDS="$PIDS $KPID"
ready=0
for _ in $(seq 1 100); do
    kill -0 "$KPID" 2>/dev/null || break
    if [ "$(timeout 2 redis-cli -p "$PORT" PING 2>/dev/null)" = PONG ]; then ready=1; break; fi
    sleep 0.1
done
if [ "$ready" != 1 ] || ! kill -0 "$KPID" 2>/dev/null; then
    tail -n 20 "$WORK/keel.log" >&2
    fail "keel did not start on port $PORT"
fi
[ "$(timeout 10 redis-cli -p "$PORT" SPACE.ADD space kv key k attributes v)" = OK ] || fail "SPACE.ADD"

VALUE=$(head -c "$DATA" /dev/zero | tr '\0' x)
echo "$("$WORK/keel" version 2>&1 | head -n1), binary $KEEL (sha256 $(sha256sum "$WORK/keel" | cut -c1-12), modified $(date -u -r "$KEEL" +%Y-%m-%dT%H:%M:%SZ)), tree at commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none), --sync $SYNC, pid $KPID"

for p in $PIPELINES; do
    case "$p" in ''|*[!0-9]*|0) fail "PIPELINES must hold positive integers" ;; esac
    if [ "$p" = 1 ]; then n=$N_P1; else n=$N_P16; fi
    data="$WORK/perf-P$p.data"
    perf record -q -g -p "$KPID" -o "$data" >"$WORK/perf-P$p.log" 2>&1 &
    ppid=$!
    PIDS="$PIDS $ppid"
    sleep 0.5   # let perf attach before the load starts
    kill -0 "$ppid" 2>/dev/null || { cat "$WORK/perf-P$p.log" >&2; fail "perf record did not start"; }
    rc=0
    timeout "$RUN_TIMEOUT" redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$CLIENTS" -n "$n" -r "$KEYSPACE" \
        -P "$p" --csv PUT kv key:__rand_int__ v "$VALUE" >"$WORK/bench-P$p.csv" 2>"$WORK/bench-P$p.err" || rc=$?
    stop_pid "$ppid" INT
    [ "$rc" = 0 ] || { cat "$WORK/bench-P$p.err" >&2; fail "redis-benchmark P$p exited $rc"; }
    kill -0 "$KPID" 2>/dev/null || { tail -n 20 "$WORK/keel.log" >&2; fail "keel died"; }
    [ -s "$data" ] || fail "perf wrote no data for P$p"
    echo
    echo "=== PUT P$p: $n requests, $(awk -F, 'NR == 2 { gsub(/"/, "", $2); print $2 }' "$WORK/bench-P$p.csv") rps (slowed by perf) ==="
    echo "--- CPU samples by thread ---"
    report "$data" --no-children --sort comm | head -n 10
    echo "--- top $TOP symbols by self time (all threads) ---"
    report "$data" --no-children --sort comm,dso,symbol | head -n "$TOP"
    echo "--- top $TOP symbols by inclusive time (self + callees, all threads) ---"
    report "$data" --children --sort comm,symbol | head -n "$TOP"
done
