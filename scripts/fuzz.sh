#!/usr/bin/env bash
# Runs every cargo-fuzz target of pygev-core's native parsers for a bounded time.
#
#   bash scripts/fuzz.sh            # 60 s per target
#   bash scripts/fuzz.sh 600        # 10 min per target
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz, which this
# script installs from crates.io when it is missing. Crashes are kept in
# rust/pygev-core/fuzz/artifacts/<target>/; the corpus grows in rust/pygev-core/fuzz/corpus/.
set -euo pipefail
seconds=${1:-60}
cd "$(dirname "$0")/../rust/pygev-core"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
status=0
for target in $(cargo +nightly fuzz list); do
    echo "== fuzzing $target for $seconds s"
    log=$(mktemp)
    if cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
        cov=$(grep -E '#[0-9]+.*DONE' "$log" | grep -oE 'cov: [0-9]+' | tail -1)
        echo "   $target: ok, ${runs:-?} runs, ${cov:-cov: ?}, no crash"
    else
        echo "   $target: FAILED (see artifacts/$target):"
        tail -40 "$log"
        status=1
    fi
    rm -f "$log"
done
exit $status
