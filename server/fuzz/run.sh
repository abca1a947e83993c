#!/usr/bin/env bash
# Run every fuzz target for a bounded time: fuzz/run.sh SECONDS
# Uses stable Rust with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags), unless
# FUZZ_TOOLCHAIN names another toolchain (e.g. FUZZ_TOOLCHAIN=+nightly).
set -euo pipefail
secs="${1:?usage: fuzz/run.sh SECONDS}"
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
tc="${FUZZ_TOOLCHAIN:-}"
for target in head_parser chunk_decoder; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target for ${secs}s"
    # New inputs go to the first (ignored) directory; seeds/ is read-only input.
    cargo $tc fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -max_len=4096 -timeout=10
done
