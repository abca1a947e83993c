#!/usr/bin/env bash
# A/B two percore binaries: CPU time per request (from /proc) under `wrk -t1 -c64` on CPU 1, each
# server pinned to CPU 0, alternating, ROUNDS rounds. For judging an optimisation on a noisy
# machine: the median ratio B/A holds where absolute numbers drift.
#   bench/scripts/ab.sh BIN_A BIN_B [ROUNDS] [SECONDS] [PATH]
set -euo pipefail
a=$1 b=$2 rounds=${3:-6} secs=${4:-3} path=${5:-/}
work=$(mktemp -d /tmp/percore-ab.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
start() {
  taskset -c 0 "$1" serve --listen 127.0.0.1:0 --cpus 0 >"$work/$2.out" 2>/dev/null &
  while ! grep -q "listening on" "$work/$2.out" 2>/dev/null; do sleep 0.05; done
  echo "$! $(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$work/$2.out" | head -1)"
}
measure() {
  local hz t0 t1 rps; hz=$(getconf CLK_TCK)
  t0=$(awk '{print $14+$15}' /proc/"$1"/stat)
  rps=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$2$path" | awk '/Requests\/sec/{print $2}')
  t1=$(awk '{print $14+$15}' /proc/"$1"/stat)
  python3 -c "print(f'{($t1-$t0)/$hz*1e6/(float(\"$rps\")*$secs):.3f}')"
}
# start runs in a process substitution (a subshell): record the pids here, where the trap sees them.
read -r apid aport < <(start "$a" a)
pids+=("$apid")
read -r bpid bport < <(start "$b" b)
pids+=("$bpid")
ratios=()
for i in $(seq 1 "$rounds"); do
  ca=$(measure "$apid" "$aport"); cb=$(measure "$bpid" "$bport")
  r=$(python3 -c "print(f'{$cb/$ca:.3f}')"); ratios+=("$r")
  echo "round $i: A $ca us/req  B $cb us/req  B/A $r"
done
python3 -c "import statistics,sys; print('median B/A', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"
