#!/usr/bin/env bash
# percore bare-metal host tuning.
#
# Prints what it would change (file: current -> new) and changes NOTHING unless --apply
# is given.  Files that do not exist (VMs, containers, missing drivers) are skipped with
# a SKIP line.  Kernel command-line and irqbalance changes are only ever printed.
#
# PERCORE_TUNE_ROOT (default /) is prepended to every /sys, /proc and /etc path, so a
# test can point the script at a fake tree (see tune_test.sh).
set -euo pipefail

PROG=${0##*/}
ROOT=${PERCORE_TUNE_ROOT:-/}
ROOT=${ROOT%/}            # "" for the real root, so "$ROOT/sys/..." stays /sys/...

APPLY=0
SHARD_CPUS=""
NIC=""
GOVERNOR=performance
THP_ENABLED=madvise
THP_DEFRAG=defer

n_change=0 n_ok=0 n_skip=0 n_fail=0

usage() {
	cat <<EOF
Usage: $PROG [--apply] [--shard-cpus LIST] [--nic IFACE] [--thp MODE|skip]
            [--governor NAME|skip] [--help]

Tunes a bare-metal host for percore (one pinned shard per CPU).  Without --apply it
only prints each intended change as "file: current -> new" and writes nothing.

  --apply             write the changes (needs root on a real host)
  --shard-cpus LIST   CPUs percore's shards run on, e.g. 2-15 or 1-7,9-15 (the same
                      list as CPUAffinity= in percore.service).  Enables the NIC IRQ
                      and kernel command-line sections.
  --nic IFACE         network interface whose IRQs are moved OFF the shard CPUs, onto
                      the remaining (housekeeping) CPUs.  Needs --shard-cpus.
  --thp MODE          transparent hugepage mode: always|madvise|never (default
                      madvise; defrag is set to "defer"), or skip
  --governor NAME     cpufreq governor for all CPUs (default performance), or skip
  --help              this text

What it does:
  cpufreq    /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor -> performance
  NIC IRQs   /proc/irq/N/smp_affinity_list -> online CPUs minus --shard-cpus
  THP        /sys/kernel/mm/transparent_hugepage/{enabled,defrag} -> madvise, defer
  advice     irqbalance, isolcpus/nohz_full/rcu_nocbs/irqaffinity (printed only),
             kernel version and kernel.io_uring_disabled checks
None of the changes survives a reboot: re-run from a boot-time unit if wanted.

Environment: PERCORE_TUNE_ROOT  root of the /sys,/proc,/etc tree (default /).
Exit status: 0 ok, 1 some --apply write failed, 2 usage error.
EOF
}

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 2; }

while [ $# -gt 0 ]; do
	case "$1" in
	--apply) APPLY=1 ;;
	--shard-cpus) [ $# -ge 2 ] || die "--shard-cpus needs a CPU list"; SHARD_CPUS=$2; shift ;;
	--shard-cpus=*) SHARD_CPUS=${1#*=} ;;
	--nic) [ $# -ge 2 ] || die "--nic needs an interface name"; NIC=$2; shift ;;
	--nic=*) NIC=${1#*=} ;;
	--thp) [ $# -ge 2 ] || die "--thp needs a mode"; THP_ENABLED=$2; shift ;;
	--thp=*) THP_ENABLED=${1#*=} ;;
	--governor) [ $# -ge 2 ] || die "--governor needs a name"; GOVERNOR=$2; shift ;;
	--governor=*) GOVERNOR=${1#*=} ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	shift
done

case "$THP_ENABLED" in always | madvise | never | skip) ;; *) die "--thp: always|madvise|never|skip" ;; esac
case "$NIC" in */* | .* ) die "--nic: bad interface name: $NIC" ;; esac
[[ "$GOVERNOR" =~ ^[A-Za-z0-9_-]+$ ]] || die "--governor: bad name: $GOVERNOR"
if [ -n "$NIC" ] && [ -z "$SHARD_CPUS" ]; then die "--nic needs --shard-cpus"; fi
if [ "$APPLY" = 1 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then die "--apply needs root"; fi

# ---- helpers --------------------------------------------------------------------

# Expand a kernel CPU list ("0-3,8,10-11") to sorted unique numbers, one per line.
expand_cpulist() {
	local list=$1 part a b
	[ -n "$list" ] || return 0
	local IFS=,
	for part in $list; do
		part=${part//[[:space:]]/}
		if [[ "$part" =~ ^([0-9]+)-([0-9]+)$ ]]; then
			a=$((10#${BASH_REMATCH[1]})) b=$((10#${BASH_REMATCH[2]}))
			[ "$a" -le "$b" ] || return 1
			seq "$a" "$b"
		elif [[ "$part" =~ ^[0-9]+$ ]]; then
			echo $((10#$part))
		else
			return 1
		fi
	done | sort -n -u
}

# Numbers on stdin (sorted) -> compact CPU list "0-3,8".
compress_cpulist() {
	awk 'NF { if (start == "") { start = prev = $1; next }
	          if ($1 == prev + 1) { prev = $1; next }
	          out = out (out == "" ? "" : ",") (start == prev ? start : start "-" prev)
	          start = prev = $1 }
	     END { if (start != "") out = out (out == "" ? "" : ",") (start == prev ? start : start "-" prev)
	           print out }'
}

normalize_cpulist() { expand_cpulist "$1" | compress_cpulist; }

# CPUs in list $1 that are not in list $2, as a compact list.
cpulist_minus() {
	awk 'NR == FNR { drop[$1]; next } !($1 in drop)' <(expand_cpulist "$2") <(expand_cpulist "$1") | compress_cpulist
}

# CPU list -> hex mask in /proc/irq/*/smp_affinity format (32-bit words, comma separated).
cpulist_to_mask() {
	expand_cpulist "$1" | awk 'BEGIN { max = 0 } { w = int($1 / 32); m[w] += 2 ^ ($1 % 32); if (w > max) max = w }
		END { s = ""; for (i = max; i >= 0; i--) s = s (s == "" ? "" : ",") sprintf("%08x", m[i] + 0); print s }'
}

read_value() { cat -- "$1" 2>/dev/null; }

# "always [madvise] never" -> madvise; plain content is returned as is.
selected_token() {
	local v=$1
	if [[ "$v" =~ \[([^]]+)\] ]]; then printf '%s' "${BASH_REMATCH[1]}"; else printf '%s' "$v"; fi
}

say() { printf '%s\n' "$*"; }
skip() { n_skip=$((n_skip + 1)); say "SKIP    $*"; }
info() { say "INFO    $*"; }
warn() { say "WARN    $*"; }
advise() { say "ADVICE  $*"; }

# set_value FILE NEW CURRENT [HINT]: report, and with --apply write NEW into FILE.
set_value() {
	local file=$1 new=$2 cur=$3 hint=${4:-}
	if [ "$cur" = "$new" ]; then
		n_ok=$((n_ok + 1)); say "OK      $file: already $new"; return 0
	fi
	n_change=$((n_change + 1))
	if [ "$APPLY" != 1 ]; then
		say "WOULD   $file: $cur -> $new"; return 0
	fi
	if { printf '%s\n' "$new" >"$file"; } 2>/dev/null; then
		say "CHANGED $file: $cur -> $new"
	else
		n_fail=$((n_fail + 1)); say "FAILED  $file: $cur -> $new (write refused${hint:+; $hint})"
	fi
}

# ---- CPU sets ---------------------------------------------------------------------

ONLINE=""
online_file="$ROOT/sys/devices/system/cpu/online"
if [ -r "$online_file" ]; then
	ONLINE=$(normalize_cpulist "$(read_value "$online_file")") || ONLINE=""
fi

SHARD=""
HOUSEKEEPING=""
if [ -n "$SHARD_CPUS" ]; then
	SHARD=$(normalize_cpulist "$SHARD_CPUS") || die "--shard-cpus: not a CPU list: $SHARD_CPUS"
	[ -n "$SHARD" ] || die "--shard-cpus: empty CPU list"
	if [ -n "$ONLINE" ]; then
		outside=$(cpulist_minus "$SHARD" "$ONLINE")
		[ -z "$outside" ] || warn "--shard-cpus $SHARD includes CPUs that are not online: $outside"
		HOUSEKEEPING=$(cpulist_minus "$ONLINE" "$SHARD")
		[ -n "$HOUSEKEEPING" ] || die "--shard-cpus $SHARD covers every online CPU ($ONLINE); leave at least one for IRQs and housekeeping"
	fi
fi

say "percore tune: root=${ROOT:-/} mode=$([ "$APPLY" = 1 ] && echo apply || echo dry-run) online=${ONLINE:-unknown} shard=${SHARD:-unset} housekeeping=${HOUSEKEEPING:-unknown}"

# ---- preflight (report only) -------------------------------------------------------

osrelease=$(read_value "$ROOT/proc/sys/kernel/osrelease" || true)
if [ -z "$osrelease" ]; then
	skip "kernel version: $ROOT/proc/sys/kernel/osrelease not readable"
elif [[ "$osrelease" =~ ^([0-9]+)\.([0-9]+) ]]; then
	kmaj=${BASH_REMATCH[1]} kmin=${BASH_REMATCH[2]}
	if [ "$kmaj" -gt 6 ] || { [ "$kmaj" -eq 6 ] && [ "$kmin" -ge 1 ]; }; then
		info "kernel $osrelease >= 6.1 (io_uring DEFER_TASKRUN available)"
	else
		warn "kernel $osrelease < 6.1: percore needs io_uring DEFER_TASKRUN (Linux >= 6.1)"
	fi
fi
iud=$(read_value "$ROOT/proc/sys/kernel/io_uring_disabled" || true)
case "$iud" in
"") info "kernel.io_uring_disabled: not present (kernel < 6.6, or not visible here)" ;;
0) info "kernel.io_uring_disabled = 0: io_uring allowed" ;;
1) warn "kernel.io_uring_disabled = 1: only CAP_SYS_ADMIN or kernel.io_uring_group members may use io_uring; set kernel.io_uring_group to percore's GID (see sysctl.d/90-percore.conf)" ;;
*) warn "kernel.io_uring_disabled = $iud: io_uring is disabled; percore cannot start (see sysctl.d/90-percore.conf)" ;;
esac

# ---- cpufreq governor ----------------------------------------------------------------

shopt -s nullglob
if [ "$GOVERNOR" = skip ]; then
	skip "cpufreq governor: --governor skip"
else
	govs=("$ROOT"/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor)
	if [ ${#govs[@]} -eq 0 ]; then
		skip "cpufreq governor: no $ROOT/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor (VM, container, or no cpufreq driver)"
	fi
	for f in "${govs[@]}"; do
		avail_file=${f%/*}/scaling_available_governors
		if [ -r "$avail_file" ] && ! grep -qw -- "$GOVERNOR" "$avail_file"; then
			skip "$f: governor '$GOVERNOR' not in: $(read_value "$avail_file" || true)"
			continue
		fi
		if ! cur=$(read_value "$f"); then skip "$f: not readable"; continue; fi
		set_value "$f" "$GOVERNOR" "$cur"
	done
fi

# ---- NIC IRQ affinity -------------------------------------------------------------------

nic_irqs() {
	local dev=$ROOT/sys/class/net/$NIC/device d irq
	for d in "$dev/msi_irqs" "$dev/../msi_irqs"; do   # PCI NIC; virtio-net (virtioN under the PCI device)
		if [ -d "$d" ]; then
			for irq in "$d"/*; do
				irq=${irq##*/}
				[[ "$irq" =~ ^[0-9]+$ ]] && echo "$irq"
			done
			return 0
		fi
	done
	# Fallback: /proc/interrupts rows naming the interface (eth0, eth0-TxRx-3, ...).
	if [ -r "$ROOT/proc/interrupts" ]; then
		awk -v nic="$NIC" '$1 ~ /^[0-9]+:$/ {
			for (i = 2; i <= NF; i++) {
				n = $i; sub(/,$/, "", n)
				if (n == nic || index(n, nic "-") == 1 || index(n, nic "@") == 1) { sub(/:$/, "", $1); print $1; break }
			} }' "$ROOT/proc/interrupts"
	fi
}

if [ -z "$NIC" ]; then
	skip "NIC IRQ affinity: no --nic given"
elif [ -z "$HOUSEKEEPING" ]; then
	skip "NIC IRQ affinity: online CPUs unknown ($online_file missing)"
else
	mapfile -t irqs < <(nic_irqs | sort -n -u)
	if [ ${#irqs[@]} -eq 0 ]; then
		skip "NIC IRQ affinity: no IRQs found for $NIC ($ROOT/sys/class/net/$NIC/device/msi_irqs, $ROOT/proc/interrupts)"
	fi
	for irq in "${irqs[@]}"; do
		f=$ROOT/proc/irq/$irq/smp_affinity_list
		if [ ! -e "$f" ]; then skip "$f: missing"; continue; fi
		if ! cur=$(read_value "$f"); then skip "$f: not readable"; continue; fi
		cur_n=$(normalize_cpulist "$cur" 2>/dev/null) || cur_n=$cur
		set_value "$f" "$HOUSEKEEPING" "$cur_n" \
			"kernel-managed IRQ (many multiqueue drivers): use isolcpus=managed_irq,... instead"
	done
fi

# ---- irqbalance (advice only) ------------------------------------------------------

irqbalance_running=no
for c in "$ROOT"/proc/[0-9]*/comm; do
	if [ "$(read_value "$c" || true)" = irqbalance ]; then irqbalance_running=yes; break; fi
done
if [ "$irqbalance_running" = yes ]; then
	warn "irqbalance is running: it re-spreads IRQs every 10 s and will undo the NIC IRQ affinity"
else
	info "irqbalance: not running"
fi
if [ -n "$SHARD" ]; then
	advise "irqbalance: either 'systemctl disable --now irqbalance', or keep it off the shard CPUs in /etc/default/irqbalance:"
	advise "$(printf '  %-38s %s' "IRQBALANCE_BANNED_CPULIST=$SHARD" "(irqbalance >= 1.8)")"
	advise "$(printf '  %-38s %s' "IRQBALANCE_BANNED_CPUS=$(cpulist_to_mask "$SHARD")" "(older irqbalance; hex mask)")"
else
	advise "irqbalance: pass --shard-cpus to get the banned-CPU settings for /etc/default/irqbalance"
fi

# ---- transparent hugepages -------------------------------------------------------------
# madvise: only regions that ask for huge pages get them, so khugepaged compaction and
# direct-reclaim stalls stay off the request path; defrag=defer never stalls a fault.

if [ "$THP_ENABLED" = skip ]; then
	skip "transparent hugepages: --thp skip"
else
	for pair in "enabled:$THP_ENABLED" "defrag:$THP_DEFRAG"; do
		f=$ROOT/sys/kernel/mm/transparent_hugepage/${pair%%:*}
		if [ ! -e "$f" ]; then skip "$f: missing (THP not built in, or not visible here)"; continue; fi
		if ! raw=$(read_value "$f"); then skip "$f: not readable"; continue; fi
		set_value "$f" "${pair#*:}" "$(selected_token "$raw")"
	done
fi

# ---- kernel command line (advice only) -------------------------------------------------

if [ -z "$SHARD" ]; then
	skip "kernel command line advice: no --shard-cpus given"
else
	cmdline=$(read_value "$ROOT/proc/cmdline" || true)
	[ -n "$cmdline" ] || skip "kernel command line: $ROOT/proc/cmdline not readable; advice below is generic"
	current_param() {
		local w
		for w in $cmdline; do case "$w" in "$1"=*) printf '%s' "${w#*=}"; return ;; esac; done
		printf 'unset'
	}
	hk=${HOUSEKEEPING:-<the other CPUs>}
	advise "kernel command line (printed only; edit GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot):"
	param() { advise "$(printf '  %-38s (now: %s) %s' "$1=$2" "$(current_param "$1")" "$3")"; }
	param isolcpus "managed_irq,domain,$SHARD" "keep the scheduler and managed IRQs off the shard CPUs"
	param nohz_full "$SHARD" "no timer tick while a shard runs alone (CONFIG_NO_HZ_FULL)"
	param rcu_nocbs "$SHARD" "RCU callbacks run on housekeeping CPUs"
	param irqaffinity "$hk" "default affinity of all other IRQs"
	advise "  With isolcpus, PID 1 and every unit default to the housekeeping CPUs only: percore.service"
	advise "  MUST then set CPUAffinity=$SHARD (drop-in), or percore would see no shard CPUs."
	for kv in isolated nohz_full; do
		f=$ROOT/sys/devices/system/cpu/$kv
		if [ -r "$f" ]; then info "$f: $(read_value "$f" || true)"; fi
	done
fi

say "summary: $n_change to change, $n_ok already set, $n_skip skipped, $n_fail failed ($([ "$APPLY" = 1 ] && echo applied || echo 'dry run: nothing written; use --apply'))"
[ "$n_fail" -eq 0 ] || exit 1
exit 0
