#!/usr/bin/env bash
# Validates everything in deploy/.  CI entry point:  bash deploy/check.sh [--quick]
#
#   bash -n, shellcheck            all deploy/*.sh
#   systemd-analyze verify         percore.service (+ offline security score, info only)
#   kubernetes-validate --strict   k8s/*.yaml against 1.30.0 (oldest supported: the
#                                  preStop sleep action) and the tool's newest schema
#   seccomp profile                k8s/seccomp-io-uring.json is OCI-format and allows io_uring
#   sysctl.d                       syntax, keys exist, per-netns values accepted by the
#                                  kernel (applied in a throwaway network namespace)
#   tune_test.sh                   tune.sh changes nothing without --apply
#   systemd_reload_test.sh         hot restart under a real systemd (needs root; ~1 min;
#                                  skipped with --quick)
# A validator that is not installed gives a SKIP line, not a failure.  Nothing is
# installed; files go to temporary directories (the systemd simulation also creates and
# removes a temporary cgroup).  Last line: "N passed, N failed".
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
K8S_MIN=1.30.0

pass=0 fail=0 skip=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/percore-deploy-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# run NAME COMMAND...: PASS/FAIL on the command's exit status; output shown on failure.
run() {
	local name=$1 out rc; shift
	out=$("$@" 2>&1); rc=$?
	if [ $rc -eq 0 ]; then
		pass=$((pass + 1)); echo "PASS  $name"
	else
		fail=$((fail + 1)); echo "FAIL  $name (exit $rc)"
		printf '%s\n' "$out" | tail -n 40 | sed 's/^/      | /'
	fi
}
skip() { skip=$((skip + 1)); echo "SKIP  $1: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }

scripts=("$here"/*.sh)

# ---- shell scripts ----------------------------------------------------------------
for s in "${scripts[@]}"; do run "bash -n ${s#"$here"/}" bash -n "$s"; done
if have shellcheck; then
	run "shellcheck $(cd "$here" && echo ./*.sh)" shellcheck "${scripts[@]}"
else
	skip shellcheck "not installed (apt-get install shellcheck)"
fi

# ---- systemd unit -------------------------------------------------------------------
# verify insists that ExecStart= binaries exist.  If /usr/local/bin/percore is not
# installed, verify a copy whose binary path points at a dummy executable instead.
verify_unit() {
	local unit=$here/percore.service
	if [ ! -x /usr/local/bin/percore ]; then
		printf '#!/bin/sh\nexit 0\n' >"$tmp/percore"
		chmod 755 "$tmp/percore"
		sed "s#/usr/local/bin/percore#$tmp/percore#g" "$here/percore.service" >"$tmp/percore.service"
		unit=$tmp/percore.service
		echo "(binary path replaced by a dummy: /usr/local/bin/percore is not installed)"
	fi
	# verify prints problems but may still exit 0 for some of them: fail on any output.
	local out
	out=$(systemd-analyze verify "$unit" 2>&1) || { printf '%s\n' "$out"; return 1; }
	[ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}
if have systemd-analyze; then
	run "systemd-analyze verify percore.service" verify_unit
	if [ -f "$tmp/percore.service" ] && systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
		score=$(systemd-analyze security --offline=yes "$tmp/percore.service" 2>/dev/null | grep -o 'Overall exposure level.*' || true)
		echo "INFO  systemd-analyze security --offline: ${score:-n/a}"
	fi
else
	skip "systemd-analyze verify" "systemd-analyze not installed (apt-get install systemd)"
fi

# ---- Kubernetes manifests -------------------------------------------------------------
manifests=("$here"/k8s/*.yaml)
if have kubernetes-validate; then
	run "kubernetes-validate --strict -k $K8S_MIN k8s/*.yaml" kubernetes-validate --quiet --strict -k "$K8S_MIN" "${manifests[@]}"
	run "kubernetes-validate --strict (newest schema) k8s/*.yaml" kubernetes-validate --quiet --strict "${manifests[@]}"
else
	skip kubernetes-validate "not installed (pip install kubernetes-validate)"
fi

check_seccomp() {
	python3 - "$here/k8s/seccomp-io-uring.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
assert p["defaultAction"] == "SCMP_ACT_ERRNO", "default action must deny"
allowed = {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args") for n in r["names"]}
for n in ("io_uring_setup", "io_uring_enter", "io_uring_register", "sched_setaffinity", "membarrier", "mbind"):
    assert n in allowed, n + " not allowed"
for forbidden in ("ptrace", "mount", "unshare", "setns", "bpf", "kexec_load"):
    assert forbidden not in allowed, forbidden + " must not be allowed"
# OCI runtime-spec format (what containerd passes to runc): docker-only conditional
# keys would be silently ignored there and turn conditional rules into unconditional ones.
for r in p["syscalls"]:
    bad = {"includes", "excludes", "comment"} & set(r)
    assert not bad, "docker-only keys %s in rule %s" % (bad, r["names"])
assert "archMap" not in p, "archMap is docker-only"
print("%d syscalls allowed unconditionally" % len(allowed))
EOF
}
if have python3; then
	run "seccomp profile k8s/seccomp-io-uring.json" check_seccomp
else
	skip "seccomp profile" "python3 not installed"
fi

# ---- sysctl.d -----------------------------------------------------------------------------
check_sysctl() {
	local f=$here/sysctl.d/90-percore.conf line key val path got n=0 bad=0 netns=0
	if [ "$(id -u)" = 0 ] && have unshare && unshare -n true 2>/dev/null; then netns=1; fi
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in '' | '#'* | ';'*) continue ;; esac
		if [[ ! "$line" =~ ^-?([a-z0-9_.]+)[[:space:]]*=[[:space:]]*(.+)$ ]]; then
			echo "bad line: $line"; bad=1; continue
		fi
		key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]} n=$((n + 1))
		path=/proc/sys/${key//.//}
		if [ ! -e "$path" ]; then echo "unknown key on this kernel: $key"; bad=1; continue; fi
		if [ "$netns" = 1 ] && unshare -n test -e "$path"; then
			# Per-network-namespace key: set it where it cannot affect the host.
			# shellcheck disable=SC2016 # $1/$2 are the inner shell's arguments
			got=$(unshare -n sh -c 'printf "%s" "$2" >"$1" && cat "$1"' _ "$path" "$val" 2>&1) ||
				{ echo "kernel rejected $key = $val: $got"; bad=1; continue; }
			[ "$(echo "$got" | tr -s ' \t' ' ')" = "$(echo "$val" | tr -s ' \t' ' ')" ] ||
				{ echo "$key: wrote '$val', read back '$got'"; bad=1; continue; }
			echo "ok $key = $val (applied in a throwaway netns)"
		else
			echo "ok $key exists (global key: not applied)"
		fi
	done <"$f"
	[ "$n" -gt 0 ] || { echo "no active settings found"; bad=1; }
	return $bad
}
run "sysctl.d/90-percore.conf" check_sysctl

# ---- tests ----------------------------------------------------------------------------------
run "tune_test.sh" bash "$here/tune_test.sh"
if [ "$QUICK" = 1 ]; then
	skip systemd_reload_test.sh "--quick"
else
	out=$(bash "$here/systemd_reload_test.sh" 2>&1); rc=$?
	if grep -q '^SKIP' <<<"$out"; then
		skip systemd_reload_test.sh "$(grep '^SKIP' <<<"$out" | head -n 1 | sed 's/^SKIP systemd reload simulation: //')"
	elif [ $rc -eq 0 ]; then
		pass=$((pass + 1)); echo "PASS  systemd_reload_test.sh ($(tail -n 1 <<<"$out"))"
	else
		fail=$((fail + 1)); echo "FAIL  systemd_reload_test.sh (exit $rc)"
		printf '%s\n' "$out" | tail -n 40 | sed 's/^/      | /'
	fi
fi

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
