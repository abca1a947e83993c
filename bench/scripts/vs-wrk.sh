#!/usr/bin/env bash
# percore-bench against wrk, closed loop, same connection count, alternating rounds.
#
# Builds release, starts a server pinned to CPU 0 (the repo's `percore serve`, or nginx with
# --nginx), then alternates
#     taskset -c 1 percore-bench -c64 -d5s --warmup 0 --cpus 1 URL   (closed loop)
#     taskset -c 1 wrk -t1 -c64 -d5s URL
# ROUNDS times each and prints every requests/s figure, the medians and the median ratio
# percore-bench / wrk. The goal (issue 5): ratio >= 1.
#
# Usage: bench/scripts/vs-wrk.sh [--nginx] [--rounds N] [--connections N] [--duration 5s]
# Needs: wrk, taskset, 2 CPUs; nginx for --nginx. Not a test: numbers depend on the machine.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROUNDS=3
CONNS=64
DUR=5s
PEER=percore
while [ $# -gt 0 ]; do
    case "$1" in
        --nginx) PEER=nginx ;;
        --rounds) ROUNDS=$2; shift ;;
        --connections) CONNS=$2; shift ;;
        --duration) DUR=$2; shift ;;
        *) echo "usage: $0 [--nginx] [--rounds N] [--connections N] [--duration D]" >&2; exit 2 ;;
    esac
    shift
done

TARGET=${CARGO_TARGET_DIR:-target}
WORK=$(mktemp -d /tmp/vs-wrk.XXXXXX)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$PEER" = percore ]; then
    cargo build --release -p percore-bench -p percore-server >&2
else
    cargo build --release -p percore-bench >&2
fi
BENCH="$TARGET/release/percore-bench"

if [ "$PEER" = percore ]; then
    taskset -c 0 "$TARGET/release/percore" serve --cpus 0 --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    ADDR=
    for _ in $(seq 1 100); do
        ADDR=$(sed -n 's#^percore: listening on http://\([^ ]*\).*#\1#p' "$WORK/server.out" | head -1)
        [ -n "$ADDR" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.err" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$ADDR" ] || { echo "server did not print its address" >&2; exit 1; }
else
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    sed -e "s/127.0.0.1:8092/127.0.0.1:$PORT/" -e "s#/tmp/peer-nginx#$WORK#g" \
        -e 's/worker_cpu_affinity .*/worker_cpu_affinity 01;/' \
        /work/shared/peers/nginx.conf >"$WORK/nginx.conf"
    taskset -c 0 nginx -p "$WORK" -c "$WORK/nginx.conf" >"$WORK/server.out" 2>"$WORK/server.err" &
    SERVER_PID=$!
    ADDR=127.0.0.1:$PORT
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://$ADDR/" && break
        sleep 0.1
    done
fi
URL="http://$ADDR/"
echo "server: $PEER on CPU 0 at $URL; load on CPU 1; $CONNS connections, $DUR per run, $ROUNDS rounds"

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Each run under GNU time: CPU µs per request (user + sys over all requests) is less sensitive to
# other load on the machine than requests/s. percore-bench runs with --warmup 0, as wrk has none.
cpu_per_req() { # time-file requests
    awk -v n="$2" '{printf "%.2f", ($1 + $2) * 1e6 / n}' "$1"
}
: >"$WORK/pb"; : >"$WORK/wrk"; : >"$WORK/ratio"
alive() {
    kill -0 "$SERVER_PID" 2>/dev/null && return 0
    echo "the server exited; its stderr ends with:" >&2
    grep -v '^ \{5,\}' "$WORK/server.err" 2>/dev/null | tail -5 >&2
    exit 1
}
for r in $(seq 1 "$ROUNDS"); do
    alive
    /usr/bin/time -f "%U %S" -o "$WORK/pb.time" taskset -c 1 "$BENCH" -c"$CONNS" -d"$DUR" --warmup 0 --cpus 1 "$URL" >"$WORK/pb.out"
    alive
    /usr/bin/time -f "%U %S" -o "$WORK/wrk.time" taskset -c 1 wrk -t1 -c"$CONNS" -d"$DUR" "$URL" >"$WORK/wrk.out"
    pb=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/pb.out")
    wk=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.out")
    pbn=$(awk '/ requests in / {print $1; exit}' "$WORK/pb.out")
    wkn=$(awk '/ requests in / {print $1; exit}' "$WORK/wrk.out")
    echo "round $r: percore-bench $pb req/s ($(cpu_per_req "$WORK/pb.time" "$pbn") CPU-us/req)," \
         "wrk $wk req/s ($(cpu_per_req "$WORK/wrk.time" "$wkn") CPU-us/req)," \
         "ratio $(awk -v a="$pb" -v b="$wk" 'BEGIN {printf "%.3f", a/b}')"
    echo "$pb" >>"$WORK/pb"; echo "$wk" >>"$WORK/wrk"
    awk -v a="$pb" -v b="$wk" 'BEGIN {print a/b}' >>"$WORK/ratio"
done
echo "median: percore-bench $(median <"$WORK/pb") req/s, wrk $(median <"$WORK/wrk") req/s," \
     "median ratio percore-bench/wrk $(median <"$WORK/ratio")"
