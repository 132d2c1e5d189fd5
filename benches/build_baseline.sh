#!/usr/bin/env bash
# Builds pygev as of git revision REV (default: the first parent of HEAD) into OUT (default
# benches/build/baseline/), for old-against-new runs of the benchmarks:
#
#   bash benches/build_baseline.sh 3398fa5
#   PYGEV_BASELINE=benches/build/baseline python benches/echo.py --servers pygev,pygev-old
#
# The revision is checked out (git worktree) into benches/build/baseline/repo and its wheel
# (release profile) installed into benches/build/baseline/site; the benchmark runs that
# revision's own example servers against it.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-HEAD~1}
out=${2:-benches/build/baseline}
rm -rf "$out"
git worktree prune
mkdir -p "$out"
git worktree add --detach "$out/repo" "$rev" >/dev/null
(
    cd "$out/repo"
    CARGO_TARGET_DIR="$PWD/../target" python -m maturin build --release -q -o ../wheels
)
python -m pip install -q --no-deps --target "$out/site" "$out"/wheels/*.whl
echo "baseline $(git rev-parse --short "$rev") built in $out"
