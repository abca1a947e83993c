#!/usr/bin/env bash
# Tests for deploy/tune.sh against fake /sys and /proc trees (PERCORE_TUNE_ROOT).
#  - without --apply nothing changes: same files, same sha256, same mtimes and modes;
#  - with --apply exactly the intended files change, to the intended values.
# Runs as any user, needs no real sysfs.  Last line: "N passed, N failed".
#
# Assertions are single-quoted strings that check() evals after the run, so they read
# the current $RC/$OUT; variables set for them look unused to shellcheck.
# shellcheck disable=SC2016,SC2034
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TUNE=$here/tune.sh
pass=0
fail=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/percore-tune-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

ok() { pass=$((pass + 1)); printf 'ok     %s\n' "$1"; }
not_ok() {
	fail=$((fail + 1)); printf 'FAIL   %s\n' "$1"
	if [ -n "${2:-}" ]; then printf '%s\n' "$2" | sed 's/^/       | /'; fi
}
# check DESCRIPTION COMMAND...: the command's success is the test result.
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d" "${OUT:-}"; fi; }

# run_tune ROOT ARGS...: sets OUT (stdout+stderr) and RC.
run_tune() {
	local root=$1; shift
	set +e
	OUT=$(PERCORE_TUNE_ROOT=$root bash "$TUNE" "$@" 2>&1)
	RC=$?
	set -e
}

put() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }

# A host with 8 CPUs, cpufreq, a PCI NIC eth0 (IRQs 40-43 via msi_irqs), a NIC ens9
# found only through /proc/interrupts (IRQ 60; IRQ 61 belongs to ens90), an unrelated
# IRQ 50, THP, a kernel command line and a running irqbalance.
make_tree() {
	local r=$1 c i
	put "$r/sys/devices/system/cpu/online" "0-7"
	for c in 0 1 2 3 4 5 6 7; do
		put "$r/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor" powersave
		put "$r/sys/devices/system/cpu/cpu$c/cpufreq/scaling_available_governors" "performance powersave"
	done
	put "$r/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor" performance
	put "$r/sys/devices/system/cpu/cpu7/cpufreq/scaling_governor" schedutil
	put "$r/sys/devices/system/cpu/cpu7/cpufreq/scaling_available_governors" "schedutil"
	for i in 40 41 42 43; do
		put "$r/sys/class/net/eth0/device/msi_irqs/$i" msix
		put "$r/proc/irq/$i/smp_affinity_list" "0-7"
	done
	put "$r/proc/irq/42/smp_affinity_list" "0,1"      # already on housekeeping CPUs
	put "$r/proc/irq/50/smp_affinity_list" "0-7"      # not a NIC IRQ
	put "$r/proc/irq/60/smp_affinity_list" "4"
	put "$r/proc/irq/61/smp_affinity_list" "5"
	put "$r/proc/interrupts" "           CPU0       CPU1
  40:          1          0   PCI-MSIX-0000:01:00.0    0-edge      eth0-TxRx-0
  50:          7          0   IO-APIC    9-fasteoi   acpi
  60:          3          0   PCI-MSIX-0000:02:00.0    1-edge      ens9-rx-0
  61:          3          0   PCI-MSIX-0000:03:00.0    1-edge      ens90-rx-0"
	put "$r/sys/kernel/mm/transparent_hugepage/enabled" "[always] madvise never"
	put "$r/sys/kernel/mm/transparent_hugepage/defrag" "always defer defer+madvise [madvise] never"
	put "$r/proc/cmdline" "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet nohz_full=4-7"
	put "$r/proc/sys/kernel/osrelease" "6.8.0-test"
	put "$r/proc/sys/kernel/io_uring_disabled" "0"
	put "$r/proc/4242/comm" "irqbalance"
	# Old timestamps: a rewrite, even with identical content, must show up as a change.
	find "$r" -exec touch -h -d '2001-02-03 04:05:06' {} +
}

# Every entry: type, mode, size, mtime (ns), path; plus sha256 of every regular file.
snapshot() {
	(
		cd "$1"
		find . -printf '%y %m %s %T@ %p\n' | LC_ALL=C sort
		find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum
	)
}

val() { cat "$1/$2"; }
has() { grep -qF -- "$1" <<<"$OUT"; }
last_line_has() { tail -n 1 <<<"$OUT" | grep -qF -- "$1"; }
same_snapshot() { [ "$(snapshot "$1")" = "$2" ] || { OUT="$OUT
--- snapshot diff:
$(diff <(printf '%s\n' "$2") <(snapshot "$1") || true)"; return 1; }; }
equals() { [ "$(val "$1" "$2")" = "$3" ] || { OUT="$2 = '$(val "$1" "$2")', expected '$3'"; return 1; }; }
mtime_of() { stat -c %Y "$1/$2"; }

# ---------------------------------------------------------------------------------
[ -r "$TUNE" ] || { echo "missing $TUNE"; echo "0 passed, 1 failed"; exit 1; }

# --help and argument errors
run_tune "$tmp/none" --help
check "--help exits 0 and prints usage" eval '[ "$RC" = 0 ] && has "Usage:" && has "--apply"'
run_tune "$tmp/none" --bogus
check "unknown argument exits 2" eval '[ "$RC" = 2 ]'
run_tune "$tmp/none" --shard-cpus 3-1
check "invalid --shard-cpus exits 2" eval '[ "$RC" = 2 ]'
run_tune "$tmp/none" --nic eth0
check "--nic without --shard-cpus exits 2" eval '[ "$RC" = 2 ]'

# Dry run on a full tree: nothing changes, the plan is printed.
R=$tmp/host
make_tree "$R"
before=$(snapshot "$R")
run_tune "$R" --shard-cpus 2-7 --nic eth0
check "dry run exits 0" eval '[ "$RC" = 0 ]'
check "dry run leaves every file, sha256, mode and mtime unchanged" same_snapshot "$R" "$before"
check "dry run plans governor powersave -> performance" has "WOULD   $R/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor: powersave -> performance"
check "dry run reports governor already set" has "OK      $R/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor: already performance"
check "dry run skips a CPU without the performance governor" has "SKIP    $R/sys/devices/system/cpu/cpu7/cpufreq/scaling_governor"
check "dry run plans NIC IRQ 40 -> housekeeping CPUs 0-1" has "WOULD   $R/proc/irq/40/smp_affinity_list: 0-7 -> 0-1"
check "dry run reports NIC IRQ 42 already on 0-1" has "OK      $R/proc/irq/42/smp_affinity_list: already 0-1"
check "dry run leaves non-NIC IRQ 50 out of the plan" eval '! has "/proc/irq/50/"'
check "dry run plans THP enabled always -> madvise" has "WOULD   $R/sys/kernel/mm/transparent_hugepage/enabled: always -> madvise"
check "dry run plans THP defrag madvise -> defer" has "WOULD   $R/sys/kernel/mm/transparent_hugepage/defrag: madvise -> defer"
check "dry run warns that irqbalance runs" has "irqbalance is running"
check "dry run prints irqbalance banned CPUs (list and mask)" eval 'has "IRQBALANCE_BANNED_CPULIST=2-7" && has "IRQBALANCE_BANNED_CPUS=000000fc"'
check "dry run prints isolcpus/nohz_full/rcu_nocbs advice with current values" \
	eval 'has "isolcpus=managed_irq,domain,2-7" && has "nohz_full=2-7" && has "(now: 4-7)" && has "rcu_nocbs=2-7" && has "irqaffinity=0-1"'
check "dry run summary says nothing was written" last_line_has "dry run: nothing written"

run_tune "$R" --shard-cpus 2-7 --nic ens9
check "dry run via /proc/interrupts fallback plans IRQ 60 only (not ens90's 61)" \
	eval '[ "$RC" = 0 ] && has "WOULD   $R/proc/irq/60/smp_affinity_list: 4 -> 0-1" && ! has "/proc/irq/61/"'
check "second dry run also changes nothing" same_snapshot "$R" "$before"
run_tune "$R"
check "dry run without options changes nothing" eval '[ "$RC" = 0 ] && same_snapshot "$R" "$before"'

# Missing files (container/VM): skip with notes, create nothing, even with --apply.
E=$tmp/empty
mkdir -p "$E"
empty_before=$(snapshot "$E")
run_tune "$E" --shard-cpus 1-3 --nic eth0
check "empty tree dry run exits 0 with SKIP notes" eval '[ "$RC" = 0 ] && has "SKIP    cpufreq governor" && has "SKIP    NIC IRQ affinity" && has "transparent_hugepage/enabled: missing"'
run_tune "$E" --apply --shard-cpus 1-3 --nic eth0
check "empty tree --apply exits 0 and creates nothing" eval '[ "$RC" = 0 ] && same_snapshot "$E" "$empty_before"'

# --apply: the intended changes, and only those.
irq42_mtime=$(mtime_of "$R" proc/irq/42/smp_affinity_list)
run_tune "$R" --apply --shard-cpus 2-7 --nic eth0
check "--apply exits 0" eval '[ "$RC" = 0 ]'
check "--apply sets governor cpu0 to performance" equals "$R" sys/devices/system/cpu/cpu0/cpufreq/scaling_governor performance
check "--apply sets governor cpu6 to performance" equals "$R" sys/devices/system/cpu/cpu6/cpufreq/scaling_governor performance
check "--apply leaves cpu7 (no performance governor) alone" equals "$R" sys/devices/system/cpu/cpu7/cpufreq/scaling_governor schedutil
check "--apply moves NIC IRQ 40 to 0-1" equals "$R" proc/irq/40/smp_affinity_list 0-1
check "--apply moves NIC IRQ 43 to 0-1" equals "$R" proc/irq/43/smp_affinity_list 0-1
check "--apply does not rewrite IRQ 42 (already 0-1)" eval '[ "$(mtime_of "$R" proc/irq/42/smp_affinity_list)" = "$irq42_mtime" ]'
check "--apply leaves non-NIC IRQ 50 alone" equals "$R" proc/irq/50/smp_affinity_list 0-7
check "--apply leaves IRQ 60 (other NIC) alone" equals "$R" proc/irq/60/smp_affinity_list 4
check "--apply sets THP enabled to madvise" equals "$R" sys/kernel/mm/transparent_hugepage/enabled madvise
check "--apply sets THP defrag to defer" equals "$R" sys/kernel/mm/transparent_hugepage/defrag defer
check "--apply never touches the kernel command line" equals "$R" proc/cmdline "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet nohz_full=4-7"
expected_changed="./proc/irq/40/smp_affinity_list
./proc/irq/41/smp_affinity_list
./proc/irq/43/smp_affinity_list
./sys/devices/system/cpu/cpu0/cpufreq/scaling_governor
./sys/devices/system/cpu/cpu1/cpufreq/scaling_governor
./sys/devices/system/cpu/cpu2/cpufreq/scaling_governor
./sys/devices/system/cpu/cpu4/cpufreq/scaling_governor
./sys/devices/system/cpu/cpu5/cpufreq/scaling_governor
./sys/devices/system/cpu/cpu6/cpufreq/scaling_governor
./sys/kernel/mm/transparent_hugepage/defrag
./sys/kernel/mm/transparent_hugepage/enabled"
changed=$(diff <(printf '%s\n' "$before" | grep '^[0-9a-f]\{64\} ') <(snapshot "$R" | grep '^[0-9a-f]\{64\} ') |
	sed -n 's/^> [0-9a-f]\{64\}  //p' | LC_ALL=C sort || true)
check "--apply changes exactly the intended files" eval '[ "$changed" = "$expected_changed" ] || { OUT="changed:
$changed"; false; }'
paths_before=$(printf '%s\n' "$before" | sed -n 's/^[a-z] [0-7]* [0-9]* [0-9.]* //p' | LC_ALL=C sort)
check "--apply creates and removes no files" eval '[ "$(cd "$R" && find . | LC_ALL=C sort)" = "$paths_before" ]'

after_apply=$(snapshot "$R")
run_tune "$R" --apply --shard-cpus 2-7 --nic eth0
check "second --apply is idempotent (0 to change, nothing rewritten)" eval '[ "$RC" = 0 ] && has "summary: 0 to change" && same_snapshot "$R" "$after_apply"'

run_tune "$R" --apply --shard-cpus 2-7 --nic ens9
check "--apply via /proc/interrupts fallback moves IRQ 60, not ens90's 61" \
	eval '[ "$RC" = 0 ] && [ "$(val "$R" proc/irq/60/smp_affinity_list)" = 0-1 ] && [ "$(val "$R" proc/irq/61/smp_affinity_list)" = 5 ]'

# A write the kernel refuses (managed IRQ): reported as FAILED, exit 1.
F=$tmp/refuse
make_tree "$F"
put "$F/sys/class/net/eth1/device/msi_irqs/44" msix
mkdir -p "$F/proc/irq/44"
ln -s /proc/version "$F/proc/irq/44/smp_affinity_list"   # readable, never writable
run_tune "$F" --apply --shard-cpus 2-7 --nic eth1 --governor skip --thp skip
check "--apply reports a refused write as FAILED and exits 1" eval '[ "$RC" = 1 ] && has "FAILED  $F/proc/irq/44/smp_affinity_list"'

# Shard CPUs covering every online CPU leave nothing for IRQs.
run_tune "$R" --shard-cpus 0-7 --nic eth0
check "--shard-cpus covering all online CPUs exits 2" eval '[ "$RC" = 2 ] && has "covers every online CPU"'

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
