#!/usr/bin/env bash
# Server CPU per request and latency, percore vs nginx (and the hyper peer when built), pinned:
# servers on CPU 0, wrk on CPU 1, alternating round by round so the ratios hold on a noisy machine.
#
#   bench/scripts/server-vs-nginx.sh [ROUNDS] [SECONDS]
#
# Scenarios: `GET /` with 64 keep-alive connections (CPU µs per request, from /proc, all threads);
# the same pipelined 16 deep; `-c1` latency (wrk's mean and p99) with and without --idle-spin-us.
# Prints every measurement and the median ratio percore/nginx per scenario.
# Needs: wrk, nginx (apt-get install -y wrk nginx-light), python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
secs=${2:-5}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 2; }
command -v nginx >/dev/null || { echo "nginx is not installed: apt-get install -y nginx-light" >&2; exit 2; }
cargo build --release -q -p percore-server
work=$(mktemp -d /tmp/percore-vs-nginx.XXXXXX)
# The servers are started inside $(...) (a subshell), so their pids go to a file, not a variable.
cleanup() {
  if [ -f "$work/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_percore() { # $1 = extra args; prints "PID PORT"
  local out="$work/percore.$RANDOM.out"
  taskset -c 0 target/release/percore serve --listen 127.0.0.1:0 --cpus 0 $1 >"$out" 2>"$out.err" &
  local pid=$!
  echo "$pid" >>"$work/pids"
  while ! grep -q "listening on" "$out" 2>/dev/null; do kill -0 "$pid" || { cat "$out.err"; exit 1; }; sleep 0.05; done
  echo "$pid $(sed -n 's/.*127.0.0.1:\([0-9]*\).*/\1/p' "$out" | head -1)"
}

start_nginx() {
  local port; port=$(free_port)
  mkdir -p "$work/nginx"
  sed -e "s#/tmp/peer-nginx#$work/nginx#g" -e "s/8092/$port/" -e "s/worker_connections 65536/worker_connections 16384/" \
    ../shared/peers/nginx.conf >"$work/nginx/nginx.conf"
  nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" 2>/dev/null &
  echo "$!" >>"$work/pids"
  while ! [ -s "$work/nginx/nginx.pid" ]; do sleep 0.05; done
  local master; master=$(cat "$work/nginx/nginx.pid")
  local worker=""
  while [ -z "$worker" ]; do worker=$(pgrep -P "$master" | head -1); sleep 0.05; done
  until (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do sleep 0.05; done
  echo "$worker $port"
}

cat >"$work/pipeline.lua" <<'LUA'
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format(nil, "/") end
  req = table.concat(r)
end
request = function() return req end
LUA

# measure PID PORT CONNS [LUA]: prints "us_per_request req_per_s"
measure() {
  local pid=$1 port=$2 conns=$3 lua=${4:-}
  local hz; hz=$(getconf CLK_TCK)
  local t0 t1 rps
  t0=$(awk '{print $14+$15}' /proc/"$pid"/stat)
  if [ -n "$lua" ]; then
    rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" -s "$lua" "http://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}')
  else
    rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}')
  fi
  t1=$(awk '{print $14+$15}' /proc/"$pid"/stat)
  # wrk counts responses, also when a script pipelines 16 requests per write.
  python3 -c "r=float('$rps'); print(f'{($t1-$t0)/$hz*1e6/(r*$secs):.2f} {r:.0f}')"
}

# latency PORT: prints "mean_us p99_us"
latency() {
  taskset -c 1 wrk -t1 -c1 -d"${secs}s" --latency "http://127.0.0.1:$1/" | python3 -c '
import sys,re
t=sys.stdin.read()
def us(v):
    m=re.match(r"([\d.]+)(us|ms|s)$",v or "")
    return float(m.group(1))*{"us":1,"ms":1000,"s":1e6}[m.group(2)] if m else float("nan")
mean=re.search(r"Latency\s+(\S+)",t)
p99=re.search(r"\s99%\s+(\S+)",t)
print(f"{us(mean and mean.group(1)):.1f} {us(p99 and p99.group(1)):.1f}")'
}

read -r ppid pport < <(start_percore "")
read -r spid sport < <(start_percore "--idle-spin-us 200")
read -r npid nport < <(start_nginx)
echo "percore pid $ppid port $pport | percore (idle spin) pid $spid port $sport | nginx worker $npid port $nport"
echo "kernel $(uname -r), $(nproc) CPUs, $rounds rounds of ${secs}s"

declare -A R
for i in $(seq 1 "$rounds"); do
  read -r pc prps < <(measure "$ppid" "$pport" 64)
  read -r nc nrps < <(measure "$npid" "$nport" 64)
  read -r pp pprps < <(measure "$ppid" "$pport" 64 "$work/pipeline.lua")
  read -r np nprps < <(measure "$npid" "$nport" 64 "$work/pipeline.lua")
  read -r pl pl99 < <(latency "$pport")
  read -r sl sl99 < <(latency "$sport")
  read -r nl nl99 < <(latency "$nport")
  echo "round $i: c64 cpu/req percore $pc us ($prps/s) nginx $nc us ($nrps/s) | pipelined16 percore $pp us ($pprps/s) nginx $np us ($nprps/s) | c1 mean/p99 percore $pl/$pl99 spin $sl/$sl99 nginx $nl/$nl99 us"
  R[cpu]+="$(python3 -c "print($pc/$nc)") "
  R[pipe_cpu]+="$(python3 -c "print($pp/$np)") "
  R[pipe_rps]+="$(python3 -c "print($pprps/$nprps)") "
  R[lat]+="$(python3 -c "print($pl/$nl)") "
  R[lat_spin]+="$(python3 -c "print($sl/$nl)") "
done
med() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float,sys.argv[1:])):.2f}')" $1; }
echo
echo "median ratios percore/nginx over $rounds rounds:"
echo "  CPU per request, GET /, 64 connections:      $(med "${R[cpu]}")  (target <= 0.9, goal 0.8)"
echo "  CPU per request, pipelined 16 deep:          $(med "${R[pipe_cpu]}")"
echo "  requests/s, pipelined 16 deep:               $(med "${R[pipe_rps]}")"
echo "  mean latency, 1 connection:                  $(med "${R[lat]}")"
echo "  mean latency, 1 connection, idle spin 200us: $(med "${R[lat_spin]}")"
