#!/usr/bin/env bash
# Runs deploy/percore.service under a REAL systemd (PID 1 of private pid/mount/net/
# cgroup namespaces) with a fake percore that implements only the process contract
# the unit relies on, and checks that `systemctl reload` hot-restarts without systemd
# losing track of the main PID.  The fake doubles as the reference for that contract:
#   - --pid-file is written atomically (tmp + rename) by the process that serves;
#   - SIGUSR2: start the successor from the binary on disk with the same argv,
#     double-forked so its parent is the service manager; ignore SIGUSR2 while draining;
#   - the successor writes the PID file, THEN tells the old process to drain;
#   - the old process never touches the PID file again, drains, exits 0;
#   - SIGTERM: drain, exit 0.
#
# Needs root, unshare/nsenter (util-linux), systemd and a writable cgroup2 hierarchy;
# prints SKIP and exits 0 otherwise.  Takes about a minute (one case waits for the
# 30 s reload timeout on purpose).  Last line: "N passed, N failed".
#
# Assertions are single-quoted strings evaluated by check()/wait_for() after the
# action, so variables set for them look unused to shellcheck.
# shellcheck disable=SC2016,SC2034
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNIT=$here/percore.service
pass=0
fail=0

skip_all() { echo "SKIP systemd reload simulation: $*"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }

[ "$(id -u)" = 0 ] || skip_all "needs root"
if ! command -v unshare >/dev/null || ! command -v nsenter >/dev/null; then skip_all "needs unshare and nsenter"; fi
SYSTEMD=""
for s in /lib/systemd/systemd /usr/lib/systemd/systemd; do [ -x "$s" ] && SYSTEMD=$s && break; done
[ -n "$SYSTEMD" ] || skip_all "systemd binary not found"
CGROOT=""
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
	if [ "$(stat -f -c %T "$d" 2>/dev/null)" = cgroup2fs ] && [ -w "$d" ]; then CGROOT=$d; break; fi
done
[ -n "$CGROOT" ] || skip_all "no writable cgroup2 hierarchy"

tmp=$(mktemp -d /tmp/percore-sd-sim.XXXXXX)
chmod 755 "$tmp"
CG=$CGROOT/${tmp##*/}
SDPID=""
LAUNCHER=""

cleanup() {
	set +e
	if [ -n "$SDPID" ] && [ -d "/proc/$SDPID" ]; then
		timeout 10 nsenter -t "$SDPID" -m -p -n -C systemctl exit >/dev/null 2>&1
		for _ in 1 2 3 4 5 6 7 8 9 10; do [ -d "/proc/$SDPID" ] || break; sleep 0.5; done
		[ -d "/proc/$SDPID" ] && kill -KILL "$SDPID" 2>/dev/null   # PID 1 of the namespace: takes all with it
	fi
	[ -n "$LAUNCHER" ] && wait "$LAUNCHER" 2>/dev/null
	if [ -d "$CG" ]; then
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			find "$CG" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null
			rmdir "$CG" 2>/dev/null && break
			sleep 0.5
		done
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the fake percore ------------------------------------------------------------
cat >"$tmp/fake-percore" <<'EOF'
#!/bin/bash
log() { echo "fake-percore[$$]: $*" >&2; }
if [ "${1:-} ${2:-}" = "serve --check" ]; then exit 0; fi
args=("$@"); pidfile=""
while [ $# -gt 0 ]; do case "$1" in --pid-file) pidfile=$2; shift 2 ;; *) shift ;; esac; done
[ -n "$pidfile" ] || { log "no --pid-file"; exit 2; }
draining=0
on_usr2() {
	if [ "$draining" = 1 ]; then log "SIGUSR2 ignored while draining"; return; fi
	log "SIGUSR2: starting successor"
	( FAKE_PREDECESSOR=$$ "$0" "${args[@]}" & )      # double fork: parent becomes PID 1
}
on_usr1() { draining=1; log "successor took over, draining"; sleep "${FAKE_DRAIN:-2}"; log "drained"; exit 0; }
on_term() { log "SIGTERM: draining"; sleep 0.5; exit 0; }
trap on_usr2 USR2; trap on_usr1 USR1; trap on_term TERM INT
sleep 0.3                                              # "take over the sockets, set up rings"
if [ -n "${FAKE_PREDECESSOR:-}" ] && [ -e /run/fake-fail-successor ]; then log "successor fails"; exit 1; fi
echo $$ >"$pidfile.tmp.$$" && mv -f "$pidfile.tmp.$$" "$pidfile"
log "serving"
if [ -n "${FAKE_PREDECESSOR:-}" ]; then kill -USR1 "$FAKE_PREDECESSOR"; unset FAKE_PREDECESSOR; fi
while :; do sleep 1 & wait $!; done
EOF
chmod 755 "$tmp/fake-percore"

# ---- PID 1 of the namespaces ---------------------------------------------------------
cat >"$tmp/inner.sh" <<EOF
#!/bin/bash
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system/percore.service.d /run/sim
# The fake lives on this tmpfs: the unit's PrivateTmp= would hide $tmp from it.
install -m 0755 '$tmp/fake-percore' /run/sim/percore
sed 's#/usr/local/bin/percore#/run/sim/percore#g' '$UNIT' >/run/systemd/system/percore.service
cat >/run/systemd/system/percore.service.d/sim.conf <<'EOT'
[Unit]
DefaultDependencies=no
Wants=
After=
[Service]
User=nobody
Group=$(id -gn nobody 2>/dev/null || echo nogroup)
StandardOutput=append:/run/fake.log
StandardError=inherit
EOT
printf '[Unit]\nDescription=sim\nDefaultDependencies=no\n' >/run/systemd/system/sim.target
umount -l /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
export container=other
exec $SYSTEMD --system --unit=sim.target --log-target=console --show-status=no
EOF
chmod 755 "$tmp/inner.sh"

mkdir "$CG"
bash -c "echo \$\$ >'$CG/cgroup.procs'; exec unshare --fork --pid --mount --uts --ipc --net --cgroup --mount-proc --propagation private '$tmp/inner.sh'" \
	>"$tmp/systemd.log" 2>&1 &
LAUNCHER=$!
for _ in $(seq 1 100); do
	SDPID=$(awk '{print $1}' "/proc/$LAUNCHER/task/$LAUNCHER/children" 2>/dev/null) || true
	[ -n "$SDPID" ] && [ "$(cat "/proc/$SDPID/comm" 2>/dev/null)" = systemd ] && break
	SDPID=""
	sleep 0.1
done
[ -n "$SDPID" ] || { cat "$tmp/systemd.log"; skip_all "could not start systemd in a namespace"; }

ns() { timeout 60 nsenter -t "$SDPID" -m -p -n -C "$@"; }
state=""
for _ in $(seq 1 100); do
	state=$(ns systemctl is-system-running 2>/dev/null || true)
	case "$state" in running | degraded) break ;; esac
	sleep 0.2
done
case "$state" in running | degraded) ;; *) skip_all "systemd did not come up (state: ${state:-none})" ;; esac
echo "systemd $(ns systemctl --version | awk 'NR==1 {print $2}') running as PID 1 of a private namespace (host pid $SDPID)"

# ---- helpers ------------------------------------------------------------------------
ok() { pass=$((pass + 1)); echo "ok     $1"; }
not_ok() { fail=$((fail + 1)); echo "FAIL   $1"; echo "       | $(show | tr '\n' ' ')"; ns tail -n 5 /run/fake.log 2>/dev/null | sed 's/^/       | /'; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
show() { ns systemctl show -p ActiveState -p SubState -p MainPID -p NRestarts -p Result percore; }
prop() { ns systemctl show -p "$1" --value percore; }
pidfile() { ns cat /run/percore/percore.pid 2>/dev/null || true; }
fakes() { ns sh -c 'for c in /proc/[0-9]*/cmdline; do { tr "\0" " " <"$c"; } 2>/dev/null; echo; done' | grep -c '^/bin/bash /run/sim/percore serve' || true; }
wait_for() { local _; for _ in $(seq 1 "$1"); do if eval "$2"; then return 0; fi; sleep 0.2; done; return 1; }
alive() { ns kill -0 "$1" 2>/dev/null; }
# The serving process has written the PID file (a reload before that fails, safely).
settled() { wait_for 50 '[ -n "$(pidfile)" ] && [ "$(prop MainPID)" = "$(pidfile)" ]'; }

# ---- cases ---------------------------------------------------------------------------
ns systemctl start percore
check "start: unit active" eval '[ "$(prop ActiveState)" = active ]'
check "start: MainPID is the PID file's pid" wait_for 25 '[ "$(prop MainPID)" = "$(pidfile)" ] && [ "$(pidfile)" != "" ]'
p0=$(prop MainPID)

rc=0; ns systemctl reload percore || rc=$?
p1=$(prop MainPID)
check "reload: systemctl reload succeeds" eval '[ "$rc" = 0 ]'
check "reload: MainPID moved to the successor at once" eval '[ "$p1" != "$p0" ] && [ "$p1" = "$(pidfile)" ]'
check "reload: old process drains and exits, unit stays active without restart" \
	wait_for 40 '! alive "$p0" && [ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" = "$p1" ] && [ "$(prop NRestarts)" = 0 ]'

rc=0; ns systemctl reload percore || rc=$?
rc2=0; ns systemctl reload percore || rc2=$?
p3=$(prop MainPID)
check "double reload within a drain: both succeed, MainPID is the newest" eval '[ "$rc" = 0 ] && [ "$rc2" = 0 ] && [ "$p3" = "$(pidfile)" ]'
check "double reload within a drain: one process left after the drains" wait_for 50 '[ "$(fakes)" = 1 ]'

ns touch /run/fake-fail-successor
rc=0; ns systemctl reload percore 2>/dev/null || rc=$?
ns rm -f /run/fake-fail-successor
check "failing successor: reload fails, old process keeps serving as MainPID" \
	eval '[ "$rc" != 0 ] && [ "$(prop MainPID)" = "$p3" ] && alive "$p3" && [ "$(prop ActiveState)" = active ]'

n0=$(prop NRestarts)
settled || true; ns systemctl reload percore || true
p4=$(prop MainPID)
ns kill -SEGV "$p4" || true
check "successor crash during the old process's drain: systemd notices and restarts" \
	wait_for 50 '[ "$(prop NRestarts)" -gt "$n0" ] && [ "$(prop SubState)" = running ] && [ "$(prop MainPID)" = "$(pidfile)" ]'

n0=$(prop NRestarts)
settled || true; ns kill -KILL "$(prop MainPID)" || true
check "crash: Restart=on-failure restarts" wait_for 50 '[ "$(prop NRestarts)" -gt "$n0" ] && [ "$(prop SubState)" = running ]'
rc=0; settled || rc=$?
check "reload right after a restart works once the PID file exists" eval '[ "$rc" = 0 ] && ns systemctl reload percore'


settled || true; ns systemctl reload percore || true
ns systemctl stop percore || true
check "stop during an upgrade: inactive, Result=success, no process left, /run/percore removed" \
	eval '[ "$(prop ActiveState)" = inactive ] && [ "$(prop Result)" = success ] && [ "$(fakes)" = 0 ] && ! ns test -e /run/percore'

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
